"""The browser extension in local mode: time to check one image, and agreement with `dfscan scan`.

    python tests/bench/bench_plugin.py [--model PATH] [--images N]

Builds the extension with ``--model`` (default: the tests' linear probe), loads it into headless
Chromium, checks the test images (the first N of tests/test_plugin.py's 32) through the
service worker's ``checkImage`` and prints: the extension's and the model's size, the time of the
first check (which loads the model) and the median of the others, and max |delta p_fake| and label
agreement against `dfscan scan` on the same files, plus the same model's time per image in ONNX
Runtime (Python, one image per batch) in the same run for a ratio. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--images", type=int, default=32)
    args = parser.parse_args()

    import numpy as np
    from playwright.sync_api import sync_playwright

    from dfscan.plugin import build_extension
    from dfscan.trt.model_info import inspect_model
    from dfscan.trt.onnxruntime import OnnxRuntime
    from dfscan.workers.images.decode import Preprocess, decode_one
    from tests._browser import CHROMIUM, CHROMIUM_ARGS, http_server
    from tests._models import export_linear_probe_model
    from tests.test_plugin import compare, scan_reference, write_test_images

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = args.model or export_linear_probe_model(tmp / "probe")
        every = write_test_images(tmp / "site" / "img")
        names = every[: args.images]
        for extra in every[args.images:]:
            (tmp / "site" / "img" / extra).unlink()
        built = build_extension(model, tmp / "ext")
        reference = scan_reference(model, tmp / "site" / "img", tmp / "scan.db")

        info = inspect_model(model)
        rt = OnnxRuntime(info)
        pre = Preprocess(size=info.input_size, mean=info.mean, std=info.std)
        py_times = []
        for name in names:
            t0 = time.perf_counter()
            rt.infer(decode_one((tmp / "site" / "img" / name).read_bytes(), pre)[None])
            py_times.append((time.perf_counter() - t0) * 1000)

        with http_server(tmp / "site") as base, sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                str(tmp / "profile"), executable_path=CHROMIUM, headless=True,
                ignore_default_args=["--disable-extensions"],
                args=[*CHROMIUM_ARGS, f"--disable-extensions-except={built.out}", f"--load-extension={built.out}"])
            worker = context.service_workers[0] if context.service_workers else context.wait_for_event("serviceworker")
            first = worker.evaluate("url => checkImage(url)", f"{base}/img/{names[0]}")
            results = {n: worker.evaluate("url => checkImage(url)", f"{base}/img/{n}") for n in names}
            context.close()
        max_delta, agreement = compare(results, reference)
        check_ms = statistics.median(r["elapsed_ms"] for r in results.values())
        mb = lambda n: f"{n / 2**20:.1f} MB"  # noqa: E731
        print(f"model            {info.path.name} ({info.architecture}), {mb(built.model_bytes)}")
        print(f"extension        {mb(built.extension_bytes)} unpacked, {mb(built.zip_bytes)} zipped "
              f"(onnxruntime-web {mb(built.ort_bytes)})")
        print(f"first check      {first['elapsed_ms']:.0f} ms (loads the model)")
        print(f"check, median    {check_ms:.0f} ms per image over {len(names)} images (fetch, decode, infer)")
        print(f"ORT Python       {statistics.median(py_times):.0f} ms per image (decode + infer, batch 1)")
        print(f"ratio            {check_ms / statistics.median(py_times):.2f} (extension / Python)")
        print(f"agreement        max |dp_fake| {max_delta:.5f}, labels {agreement:.1%} identical "
              f"(p_fake range {min(v[2] for v in reference.values()):.3f}..{max(v[2] for v in reference.values()):.3f})")


if __name__ == "__main__":
    main()
