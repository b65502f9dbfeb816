"""Where the time goes on a GPU box: decode, inference and end-to-end images/s for each decoder and runtime found.

    python tests/bench/bench_gpu.py [--backbone resnext50_32x4d] [--images 1024] [--size 512x384] [--model PATH]
                                    [--decoder dali-gpu] [--runtime torch] [--batch 64]

Writes ``--images`` JPEGs, then measures on this machine, for every decoder
(pillow, dali-cpu, dali-gpu) and runtime (onnxruntime; tensorrt in fp32, fp16
and int8 where ``NAME_int8.onnx`` lies beside the model; torch in fp32, and in
fp16 and bf16 on CUDA) that can run here, or only those named by ``--decoder``
/ ``--runtime`` (repeatable):

  decode      ``decode_batch`` on bytes already in memory, batches of 64
  inference   the runtime on tensors decoded beforehand (TensorRT twice:
              one batch at a time, and ``infer_many`` with the next batch
              queued before waiting on the current one)
  end-to-end  the real scan (walk, read, decode, infer, write to SQLite)
              for each decoder x runtime pair

Prints one table and, per pair, end-to-end / min(decode, inference): near 1
means the pipeline overlaps its stages; well below means time goes elsewhere
(reading, host copies, the database).  Not a test: nothing here asserts a speed.
Engines are built into the temporary folder (minutes for ResNeXt-50).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402


def write_images(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    from tests._images import write_jpegs

    return write_jpegs(folder, n, size=size)


def decoders_here(only: list[str] | None = None) -> list[str]:
    from dfscan.workers.images.decoders import DECODERS

    names = [name for name in ("pillow", "dali-cpu", "dali-gpu") if DECODERS[name].available()[0]]
    return [n for n in names if not only or n in only]


def runtimes_here(model: Path | None = None, only: list[str] | None = None) -> list[tuple[str, str | None]]:
    """(runtime, precision) pairs that can run here (and were asked for)."""
    from dfscan.trt.engine import int8_path
    from dfscan.trt.pytorch import cuda_status
    from dfscan.trt.registry import RUNTIMES

    out: list[tuple[str, str | None]] = [("onnxruntime", None)]
    if RUNTIMES["tensorrt"].available()[0]:
        out += [("tensorrt", "fp32"), ("tensorrt", "fp16")]
        if model is not None and int8_path(model).is_file():
            out.append(("tensorrt", "int8"))
    out.append(("torch", "fp32"))
    if cuda_status()[0]:
        out += [("torch", "fp16"), ("torch", "bf16")]
    return [(k, p) for k, p in out if not only or k in only]


def bench_decode(name: str, files, pre, batch: int, repeats: int) -> float:
    from dfscan.workers.images.decoders import create_decoder

    decoder = create_decoder(name, pre, threads=max(2, (os.cpu_count() or 2) // 2), batch_size=batch)
    try:
        decoder.decode_batch(files[:batch])  # warm-up: pipeline build, nvJPEG handles
        start = time.perf_counter()
        for _ in range(repeats):
            for i in range(0, len(files), batch):
                decoder.decode_batch(files[i : i + batch])
        return repeats * len(files) / (time.perf_counter() - start)
    finally:
        decoder.close()


def load_runtime(kind: str, precision: str | None, info, engine_dir: Path):
    if kind == "onnxruntime":
        from dfscan.trt.onnxruntime import OnnxRuntime

        return OnnxRuntime(info)
    if kind == "torch":
        from dfscan.trt.pytorch import TorchRuntime

        return TorchRuntime(info, precision=precision)
    from dfscan.trt.tensorrt import TensorRTRuntime

    return TensorRTRuntime(info, precision=precision, engine_dir=engine_dir)


def bench_infer(runtime, tensors: np.ndarray, batch: int, repeats: int) -> dict[str, float]:
    batches = [tensors[i : i + batch] for i in range(0, len(tensors), batch)]
    runtime.infer(batches[0])
    start = time.perf_counter()
    for _ in range(repeats):
        for b in batches:
            runtime.infer(b)
    out = {"one_at_a_time": repeats * len(tensors) / (time.perf_counter() - start)}
    if hasattr(runtime, "infer_many"):
        start = time.perf_counter()
        for _ in range(repeats):
            for _logits in runtime.infer_many(batches):
                pass
        out["pipelined"] = repeats * len(tensors) / (time.perf_counter() - start)
    return out


def bench_scan(model: Path, folder: Path, db_path: Path, decoder: str, runtime: str, batch: int) -> float:
    from tests.bench.bench_scan import end_to_end

    return end_to_end(model, folder, db_path, batch, decoder=decoder, runtime=runtime,
                      decode_threads=max(2, (os.cpu_count() or 2) // 2))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnext50_32x4d")
    parser.add_argument("--model", type=Path, help="an ONNX model (default: export the detector with random weights)")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--size", default="256x256", help="WxH of the JPEGs written")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decoder", action="append", help="only this decoder (repeatable): pillow, dali-cpu, dali-gpu")
    parser.add_argument("--runtime", action="append", help="only this runtime (repeatable): onnxruntime, tensorrt, torch")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def model_to_bench(args: argparse.Namespace, tmp_path: Path) -> Path:
    """A copy of ``--model`` (engines go beside the copy, not the original), or the detector with random weights."""
    if args.model:
        model_dir = tmp_path / "model"
        shutil.copytree(args.model.parent, model_dir)
        return model_dir / args.model.name
    from dfscan.detector.export import export_untrained

    return export_untrained(args.backbone, tmp_path / "model")


def keep(figures: dict, json_path: Path | None, stage: str, name: str, value) -> None:
    """Print and save each figure as it comes: a run cut short by a time limit still reports."""
    figures[stage][name] = value
    print(f"measured {stage} {name}: {value}", flush=True)
    if json_path:
        json_path.write_text(json.dumps(figures, indent=2, default=str))


def print_table(figures: dict, args: argparse.Namespace) -> None:
    """One row per measurement, and each scan's rate against the slower of its decode and inference."""
    print(f"{args.images} JPEGs of {args.size}, batch {args.batch}, {os.cpu_count()} CPUs")
    print(f"{'stage':<42}{'images/s':>12}")
    for name, rate in figures["decode"].items():
        print(f"{'decode ' + name:<42}{rate:>12.1f}")
    for name, rates in figures["inference"].items():
        for mode, rate in rates.items():
            print(f"{'infer ' + name + ' (' + mode + ')':<42}{rate:>12.1f}")
    for pair, rate in figures["end_to_end"].items():
        decoder, kind = pair.split("+")
        infer_rates = [max(r.values()) for n, r in figures["inference"].items() if n.startswith(kind)]
        bound = min(figures["decode"][decoder], max(infer_rates))
        print(f"{'scan ' + pair:<42}{rate:>12.1f}   end-to-end / min(decode, infer) = {rate / bound:.2f}")


def main() -> None:
    args = parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))

    from dfscan.trt.model_info import inspect_model
    from dfscan.doctor import versions
    from dfscan.workers.images.decode import PillowDecoder, Preprocess
    from dfscan.workers.reading.reader import read_file

    figures: dict = {"images": args.images, "size": args.size, "batch": args.batch, "cpus": os.cpu_count(),
                     "versions": versions(), "decode": {}, "inference": {}, "end_to_end": {}}
    with tempfile.TemporaryDirectory(prefix="dfscan-gpubench-") as tmp:
        tmp_path = Path(tmp)
        model = model_to_bench(args, tmp_path)
        info = inspect_model(model)
        pre = Preprocess(size=info.input_size, mean=info.mean, std=info.std)
        paths = write_images(tmp_path / "images", args.images, (w, h))
        files = [read_file(str(p)) for p in paths]

        decoders, runtimes = decoders_here(args.decoder), runtimes_here(model, args.runtime)
        figures["asked"] = {"decoders": decoders, "runtimes": runtimes}

        for name in decoders:
            keep(figures, args.json, "decode", name, bench_decode(name, files, pre, args.batch, args.repeats))
        reference = PillowDecoder(pre)
        tensors = np.stack(reference.decode_batch(files))
        reference.close()

        for kind, precision in runtimes:
            label = kind if precision is None else f"{kind}-{precision}"
            runtime = load_runtime(kind, precision, info, model.parent / "engines")
            try:
                keep(figures, args.json, "inference", label, bench_infer(runtime, tensors, args.batch, args.repeats))
            finally:
                runtime.close()

        # The scan's runtime picks its own precision: the best engine cached beside the model (int8 if built above,
        # else fp16); torch runs fp16 on CUDA.
        for decoder in decoders:
            for kind in dict.fromkeys(k for k, _ in runtimes):
                keep(figures, args.json, "end_to_end", f"{decoder}+{kind}", bench_scan(
                    model, tmp_path / "images", tmp_path / "bench.db", decoder, kind, args.batch
                ))

    print_table(figures, args)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
