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

``--tensor-path`` measures device-resident batches (#28) instead: for each
decoder, each GPU runtime (torch fp16 and bf16; TensorRT fp16 where installed;
torch fp32 on a CPU-only machine, for a dry run) and each workload (whole
images, faces, videos of ``--frames`` frames), a scan with ``--batches host``
and one with ``--batches device`` on one open context (model load and engine
builds not counted): items/s, the GPU memory torch allocated at its peak
(``torch.cuda.max_memory_allocated``; DALI's own buffers are not in it), and
the parity of the two: the largest |p_fake difference| over every file, and
whether every row's status and label agree.  Goals on one H100 (DALI + torch
fp16): 5,000 images/s, 2,000 with faces, 100 videos/s of 16 frames.
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
    parser.add_argument("--tensor-path", action="store_true",
                        help="host vs device-resident batches on images, faces and videos (see above)")
    parser.add_argument("--faces", type=int, default=512, help="--tensor-path: face images (256x256, one face each)")
    parser.add_argument("--videos", type=int, default=64, help="--tensor-path: videos (320x240 H.264)")
    parser.add_argument("--frames", type=int, default=16, help="--tensor-path: frames sampled per video")
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


def gpu_runtimes(model: Path, only: list[str] | None) -> list[tuple[str, str | None]]:
    """The runtimes device batches are for: torch fp16/bf16 on CUDA and TensorRT fp16 where installed; torch fp32
    on a machine without a GPU (a dry run of the bench itself)."""
    from dfscan.trt.pytorch import cuda_status
    from dfscan.trt.registry import RUNTIMES

    out: list[tuple[str, str | None]] = []
    if cuda_status()[0]:
        out += [("torch", "fp16"), ("torch", "bf16")]
        if RUNTIMES["tensorrt"].available()[0]:
            out.append(("tensorrt", "fp16"))
    else:
        out.append(("torch", "fp32"))
    return [(k, p) for k, p in out if not only or k in only]


def write_face_images(folder: Path, n: int) -> None:
    """``n`` 256x256 JPEGs, each one face filling most of it (aligned-crop style), shifted and scaled a little."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    astronaut = Image.fromarray(data.astronaut())
    rng = np.random.default_rng(0)
    for i in range(n):
        side = int(rng.integers(150, 200))
        x, y = 225 - side // 2 + int(rng.integers(-10, 10)), 117 - side // 2 + int(rng.integers(-10, 10))
        crop = astronaut.crop((x, y, x + side, y + side)).resize((256, 256), Image.Resampling.BILINEAR)
        crop.save(folder / f"face_{i:05d}.jpg", quality=90)


def write_videos(folder: Path, n: int, frames: int) -> None:
    """``n`` H.264 MP4s of 320x240 (NVDEC decodes them for DALI), a few frames more than are sampled."""
    from tests._videos import write_video

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_video(folder / f"clip_{i:04d}.mp4", frames + 4, codec="h264-mp4", size=(320, 240))


def _peak_memory_reset() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_memory_mib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


def scan_on_context(ctx, folder: Path, warm: Path) -> tuple[float, dict, float | None]:
    """(items/s, {path: (status, label, p_fake)}, peak GPU MiB) of a scan of ``folder`` on the open ``ctx``.

    A scan of ``warm`` runs first (pipelines, cuDNN plans, static shapes); only the second is timed.
    """
    from sqlalchemy import text

    from dfscan.scanner import ScanSource, WalkOptions
    from dfscan.workers.scoring.local import LocalScan

    options = WalkOptions(ctx.settings.scan_extensions)
    warmup = LocalScan(ctx.settings, ScanSource((str(warm),), (), options))
    warmup.register(ctx)
    warmup.score(ctx)
    _peak_memory_reset()
    scan = LocalScan(ctx.settings, ScanSource((str(folder),), (), options))
    scan.register(ctx)
    start = time.perf_counter()
    summary = scan.score(ctx)
    seconds = time.perf_counter() - start
    peak = _peak_memory_mib()
    with ctx.engine.connect() as conn:
        rows = conn.execute(text("SELECT path, status, label, p_fake FROM scan_results WHERE scan_id = :s"),
                            {"s": scan.scan_id}).all()
    return summary.total / seconds, {r.path: (r.status, r.label, r.p_fake) for r in rows}, peak


def tensor_path(args: argparse.Namespace, model: Path, tmp_path: Path, figures: dict) -> None:
    """Host vs device batches for each decoder x GPU runtime x workload; see the module's docstring."""
    from dfscan.core.settings import Settings
    from dfscan.workers.scoring.context import ScanContext

    workloads = {  # name: (folder, warm-up folder, settings)
        "images": (tmp_path / "images", tmp_path / "warm_images", {"faces": "off", "video_extensions": ()}),
        "faces": (tmp_path / "faces", tmp_path / "warm_faces", {"faces": "on", "video_extensions": ()}),
        "videos": (tmp_path / "videos", tmp_path / "warm_videos", {"faces": "off", "frames": args.frames}),
    }
    write_face_images(tmp_path / "faces", args.faces)
    write_face_images(tmp_path / "warm_faces", min(args.faces, args.batch))
    write_videos(tmp_path / "videos", args.videos, args.frames)
    write_videos(tmp_path / "warm_videos", max(1, min(args.videos, args.batch // args.frames)), args.frames)
    write_images(tmp_path / "warm_images", min(args.images, args.batch), (256, 256))
    figures["tensor_path"], figures["parity"] = {}, {}
    for decoder in decoders_here(args.decoder):
        for kind, precision in gpu_runtimes(model, args.runtime):
            for workload, (folder, warm, extra) in workloads.items():
                label = f"{workload} {decoder} {kind}-{precision}"
                seen: dict[str, dict] = {}
                for batches in ("host", "device"):
                    settings = Settings(db_url=f"sqlite:///{tmp_path / 'tensor.db'}", model=model, runtime=kind,
                                        precision=precision, decoder=decoder, batches=batches,
                                        batch_size=args.batch, pdq=False, provenance=False,
                                        decode_threads=max(2, (os.cpu_count() or 2) // 2), **extra)
                    try:
                        ctx = ScanContext.open(settings)
                    except Exception as exc:  # noqa: BLE001 - a runtime that can't start: say why, go on
                        print(f"tensor {label} {batches}: can't run: {exc}", flush=True)
                        continue
                    try:
                        rate, seen[batches], peak = scan_on_context(ctx, folder, warm)
                    finally:
                        ctx.close()
                    keep(figures, args.json, "tensor_path", f"{label} {batches}",
                         {"per_s": round(rate, 1), "unit": "videos" if workload == "videos" else "images",
                          "gpu_peak_mib": peak})
                if len(seen) == 2:
                    host, device = seen["host"], seen["device"]
                    same = host.keys() == device.keys() and all(host[p][:2] == device[p][:2] for p in host)
                    deltas = [abs(host[p][2] - device[p][2]) for p in host
                              if p in device and host[p][2] is not None and device[p][2] is not None]
                    keep(figures, args.json, "parity", label, {"rows_agree": same, "files": len(host),
                                                               "max_delta_p_fake": max(deltas, default=None)})
    print_tensor_table(figures)


def print_tensor_table(figures: dict) -> None:
    print(f"{'tensor path (workload decoder runtime batches)':<52}{'per s':>10}{'GPU peak MiB':>14}")
    for name, row in figures["tensor_path"].items():
        peak = "-" if row["gpu_peak_mib"] is None else f"{row['gpu_peak_mib']:.0f}"
        print(f"tensor {name:<45}{row['per_s']:>10.1f} {row['unit'][:6]:<6}{peak:>8}")
    for name, row in figures["parity"].items():
        print(f"parity {name}: rows agree {row['rows_agree']} over {row['files']} files, "
              f"max |delta p_fake| {row['max_delta_p_fake']}")


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
        if args.tensor_path:
            figures["versions"] = versions()
            tensor_path(args, model, tmp_path, figures)
            if args.json:
                args.json.write_text(json.dumps(figures, indent=2, default=str))
            return
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
