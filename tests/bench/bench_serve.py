"""`dfscan serve` under load: 64 concurrent single-image clients against the model's own batch-64 rate.

    python tests/bench/bench_serve.py [--backbone resnext50_32x4d | --model PATH] [--clients 64] [--rounds 8]

Measures, on the same model and ONNX Runtime settings, in one run:

  model-only   ONNX Runtime on tensors decoded beforehand, batches of 64
  serve        the real server process (`dfscan serve` on a free port); --clients
               clients each send one image per request, --rounds requests each,
               all at once: images/s, p50/p99 latency, and the batch sizes the
               dynamic batcher formed (from its /metrics)

model-only is measured before and after the load, and serve is compared with
their mean. Without --model/--backbone, the tiny test detector is used. Not a
test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from tests._cluster import DFSCAN, free_port, wait_for  # noqa: E402
from tests._images import write_jpegs  # noqa: E402


def model_only(onnx_path: Path, files: list[Path], batch: int, threads: int, repeats: int = 4) -> float:
    from dfscan.trt.model_info import inspect_model
    from dfscan.trt.onnxruntime import OnnxRuntime
    from dfscan.workers.images.decode import Preprocess, decode_one

    info = inspect_model(onnx_path)
    pre = Preprocess(size=info.input_size, mean=info.mean, std=info.std)
    tensors = np.stack([decode_one(files[i % len(files)].read_bytes(), pre) for i in range(batch)])
    rt = OnnxRuntime(info, intra_op_threads=threads)
    rt.infer(tensors)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        rt.infer(tensors)
    elapsed = time.perf_counter() - start
    rt.close()
    return repeats * batch / elapsed


def _batch_histogram(metrics: str) -> dict[float, float]:
    out = {}
    for line in metrics.splitlines():
        if line.startswith("dfscan_serve_batch_size_bucket"):
            le = line.split('le="')[1].split('"')[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.split()[-1])
    return out


def _metric(metrics: str, name: str) -> float:
    return next(float(line.split()[1]) for line in metrics.splitlines() if line.startswith(name + " "))


async def _load(url: str, token: str, files: list[bytes], clients: int,
                rounds: int) -> tuple[float, list[float], str, str]:
    """Wall time and latencies of the measured load, and /metrics just before and just after it."""
    import httpx

    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits,
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        async def one(i: int) -> None:
            for r in range(rounds):
                data = files[(i + r) % len(files)]
                t = time.perf_counter()
                res = await client.post("/v1/score", files={"file": (f"{i}.jpg", data, "image/jpeg")})
                latencies.append(time.perf_counter() - t)
                assert res.status_code == 200 and res.json()["results"][0]["status"] == "ok", res.text

        await asyncio.gather(*(one(i) for i in range(min(clients, 8))))  # warm-up: first batches, connections
        latencies.clear()
        before = (await client.get("/metrics")).text
        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(clients)))
        wall = time.perf_counter() - start
        return wall, latencies, before, (await client.get("/metrics")).text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--backbone", help="export this backbone with random weights (e.g. resnext50_32x4d)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: all cores)")
    parser.add_argument("--repeats", type=int, default=4, help="batches timed for model-only, before and after")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp_name:
        tmp = Path(tmp_name)
        if args.model:
            model = args.model
        elif args.backbone:
            from dfscan.detector.export import export_untrained

            model = export_untrained(args.backbone, tmp / "model")
        else:
            from tests._models import export_tiny_model

            model = export_tiny_model(tmp / "model")
        paths = write_jpegs(tmp / "imgs", 64)
        files = [p.read_bytes() for p in paths]
        before = model_only(model, paths, args.batch, args.threads, args.repeats)

        db_url = f"sqlite:///{tmp / 'serve.db'}"
        create = [DFSCAN, "api-key", "create", "--name", "bench", "--role", "admin", "--db", db_url, "--json"]
        token = json.loads(subprocess.run(create, check=True, capture_output=True, text=True).stdout)["token"]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = _serve_env(args)
        proc = subprocess.Popen([DFSCAN, "serve", "--model", str(model), "--db", db_url, "--port", str(port),
                                 "--batch-size", str(args.batch), "--max-batch-delay-ms", str(args.delay_ms),
                                 "--runtime", "onnxruntime", "--decoder", "pillow", "--log-level", "warning"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            import httpx

            wait_for(lambda: proc.poll() is None and _ok(httpx, url), 600, "the server")
            wall, latencies, m0, m1 = asyncio.run(_load(url, token, files, args.clients, args.rounds))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        after = model_only(model, paths, args.batch, args.threads, args.repeats)

    h0, h1 = _batch_histogram(m0), _batch_histogram(m1)
    n_batches = _metric(m1, "dfscan_serve_batch_size_count") - _metric(m0, "dfscan_serve_batch_size_count")
    n_images = _metric(m1, "dfscan_serve_batch_size_sum") - _metric(m0, "dfscan_serve_batch_size_sum")
    hist = {}
    prev = 0.0
    for le in sorted(h1):
        count = (h1[le] - h0.get(le, 0.0)) - prev
        prev += count
        if count:
            hist["<=" + (str(int(le)) if le != float("inf") else "inf")] = int(count)
    images = args.clients * args.rounds
    rate = images / wall
    model_rate = (before + after) / 2
    lat = np.array(latencies) * 1000
    result = {
        "model": str(args.backbone or args.model or "tiny test detector"),
        "clients": args.clients, "requests": images, "batch": args.batch, "delay_ms": args.delay_ms,
        "model_only_images_per_s": [round(before, 1), round(after, 1)],
        "serve_images_per_s": round(rate, 1),
        "ratio_to_model": round(rate / model_rate, 3),
        "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "batches": int(n_batches), "mean_batch": round(n_images / max(n_batches, 1), 1), "batch_sizes": hist,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"model: {result['model']}; {args.clients} clients x {args.rounds} single-image requests")
    print(f"  model-only (batch {args.batch}) {before:8.1f} / {after:8.1f} images/s (before / after)")
    print(f"  serve                  {rate:8.1f} images/s  = {result['ratio_to_model']:.2f}x the model's mean")
    print(f"  latency p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms")
    print(f"  batches formed: {result['batches']} (mean {result['mean_batch']} images); sizes {hist}")


def _serve_env(args: argparse.Namespace) -> dict[str, str]:
    """The server's environment: its threads, and every client (they share one key) in flight at once."""
    return {**os.environ, "DFSCAN_THREADS": str(args.threads), "DFSCAN_MAX_UPLOADS_PER_KEY": str(args.clients),
            "DFSCAN_MAX_UPLOADS": str(max(args.clients, 64))}


def _ok(httpx, url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
