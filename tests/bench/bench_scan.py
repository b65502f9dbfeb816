"""End-to-end scan throughput against the model's own, measured in one run.

    python tests/bench/bench_scan.py [--backbone resnext50_32x4d] [--images 256] [--model PATH]

Writes ``--images`` JPEGs of 256x256, then measures, on the same model and
the same ONNX Runtime settings:

  model-only   ONNX Runtime on tensors decoded beforehand, batches of 64
  end-to-end   the real scan (walk, read, decode, infer, write to SQLite)

model-only is run before and after the scan, and the scan is compared with
their mean, so drift on a shared machine shows as a gap between the two.
Prints a table and the ratio end-to-end / model-only.  Not a test: nothing
here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402


def model_only(onnx_path: Path, files: list[Path], batch: int) -> float:
    from dfscan.trt.model_info import inspect_model
    from dfscan.trt.onnxruntime import OnnxRuntime
    from dfscan.workers.images.decode import Preprocess, decode_one

    info = inspect_model(onnx_path)
    pre = Preprocess(size=info.input_size, mean=info.mean, std=info.std)
    tensors = np.stack([decode_one(p.read_bytes(), pre) for p in files])
    rt = OnnxRuntime(info)
    rt.infer(tensors[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(tensors), batch):
        rt.infer(tensors[i : i + batch])
    elapsed = time.perf_counter() - start
    rt.close()
    return len(tensors) / elapsed


def end_to_end(onnx_path: Path, folder: Path, db_path: Path, batch: int, **settings: object) -> float:
    """images/s of the real in-process scan of ``folder`` into a fresh SQLite file; ``settings`` override."""
    from dfscan.core.settings import Settings
    from dfscan.scanner import ScanSource, WalkOptions
    from dfscan.workers.scoring.local import LocalScan

    if db_path.exists():
        db_path.unlink()
    config = Settings(db_url=f"sqlite:///{db_path}", model=onnx_path, batch_size=batch, **settings)
    summary = LocalScan(config, ScanSource((str(folder),), (), WalkOptions(config.extensions))).run()
    assert summary.total == summary.ok, summary
    return summary.images_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnext50_32x4d")
    parser.add_argument("--model", type=Path, help="an ONNX model (default: export the detector with random weights)")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from tests._images import write_jpegs

    with tempfile.TemporaryDirectory(prefix="dfscan-bench-") as tmp:
        tmp_path = Path(tmp)
        from dfscan.detector.export import export_untrained

        onnx_path = args.model or export_untrained(args.backbone, tmp_path / "model")
        files = write_jpegs(tmp_path / "images", args.images)
        before = model_only(onnx_path, files, args.batch)
        e2e = end_to_end(onnx_path, tmp_path / "images", tmp_path / "bench.db", args.batch)
        after = model_only(onnx_path, files, args.batch)
    reference = (before + after) / 2
    figures = {
        "model": str(args.model or args.backbone),
        "images": args.images,
        "batch": args.batch,
        "cpus": os.cpu_count(),
        "model_only_images_per_s": [round(before, 2), round(after, 2)],
        "end_to_end_images_per_s": round(e2e, 2),
        "ratio": round(e2e / reference, 3),
    }
    print(f"{'stage':<34}{'images/s':>10}")
    print(f"{'ONNX Runtime, pre-decoded (before)':<34}{before:>10.2f}")
    print(f"{'dfscan scan end-to-end':<34}{e2e:>10.2f}")
    print(f"{'ONNX Runtime, pre-decoded (after)':<34}{after:>10.2f}")
    print(f"end-to-end / model-only = {figures['ratio']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
