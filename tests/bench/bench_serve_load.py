"""`dfscan serve` under hostile load: /healthz latency and the server's memory with 50 scans and 64 uploads in flight.

    python tests/bench/bench_serve_load.py [--dfscan PATH] [--scans 50] [--uploads 64] [--keys 16]
                                           [--files-per-scan 20] [--model PATH] [--log PATH] [--json]

The real server process (``--dfscan``: the ``dfscan`` executable of the
checkout to measure, by default this one's) on a free port, SQLite in a
temporary folder. While /healthz is asked every 50 ms (from a process of its
own: the load's client threads can't delay it) and the server's RSS is read
every 100 ms:

  1. ``--uploads`` uploads are held in flight (headers and the start of the
     body sent, the rest held back), spread over ``--keys`` API keys;
  2. ``--scans`` scans of ``--files-per-scan`` images each are asked for at once;
  3. once every scan has its answer, the uploads' bodies are finished;
  4. the run ends when every scan has ended.

Printed: /healthz latency (p50, p99, max) while the load is in flight, and in
each step, how
long ``POST /v1/scans`` took to answer, the uploads' answers by status, the
server's peak RSS, and the time until every scan ended. Only options every
version of ``dfscan serve`` has are used, so the same script measures a
checkout from before the limits existed (``git worktree add /tmp/before HEAD``
and a venv with it installed). Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx  # noqa: E402

from tests._cluster import DFSCAN, free_port, wait_for  # noqa: E402
from tests._images import write_jpegs  # noqa: E402
from tests._load import HealthWatch, HeldUpload, percentiles, rss_mb  # noqa: E402


class RssWatch:
    """The server's RSS every 100 ms, in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.mb, self.done = pid, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(0.1):
            try:
                self.mb.append(rss_mb(self.pid))
            except (OSError, ValueError):
                return

    def stop(self) -> list[float]:
        self.done.set()
        self.thread.join()
        return self.mb


def _setup(tmp: Path, args: argparse.Namespace) -> tuple[Path, str, list[str], Path]:
    """The model, the database with ``--keys`` API keys, and the scans' folders."""
    from tests._models import export_tiny_model

    model = args.model or export_tiny_model(tmp / "model")
    db_url = f"sqlite:///{tmp / 'serve.db'}"
    keys = []
    for i in range(args.keys):
        out = subprocess.run([args.dfscan, "api-key", "create", "--name", f"bench{i}", "--db", db_url, "--json"],
                             check=True, capture_output=True, text=True).stdout
        keys.append(json.loads(out)["token"])
    storage = tmp / "storage"
    for i in range(args.scans):
        write_jpegs(storage / f"s{i:03d}", args.files_per_scan, start=i * args.files_per_scan)
    return model, db_url, keys, storage


def _load(url: str, keys: list[str], storage: Path, args: argparse.Namespace) -> dict:
    """Steps 1-4 of the docstring; what each step saw."""
    marks = {"uploads held": time.monotonic()}
    held = [HeldUpload(url, keys[i % len(keys)], i) for i in range(args.uploads)]
    time.sleep(1.0)  # the server has read every held upload's headers

    # One client (its connections pooled) for every thread: the load's own CPU stays small beside the server's.
    client = httpx.Client(base_url=url, timeout=600, limits=httpx.Limits(max_connections=args.scans))

    def start(i: int) -> tuple[float, int, str, int]:
        key = keys[i % len(keys)]
        t = time.perf_counter()
        r = client.post("/v1/scans", headers={"Authorization": f"Bearer {key}"},
                        json={"roots": [str(storage / f"s{i:03d}")]})
        return time.perf_counter() - t, r.status_code, key, r.json().get("scan_id", 0) if r.status_code == 202 else 0

    marks["scans asked for"] = time.monotonic()
    with client, ThreadPoolExecutor(args.scans) as pool:
        started = list(pool.map(start, range(args.scans)))
    marks["uploads finishing"] = time.monotonic()
    with ThreadPoolExecutor(len(held) or 1) as pool:
        uploads = Counter(answer[0] for answer in pool.map(HeldUpload.finish, held))
    marks["scans running"] = time.monotonic()
    unfinished = {(scan_id, key) for _, code, key, scan_id in started if code == 202}

    def ended() -> bool:
        with httpx.Client(base_url=url, timeout=60) as client:
            for scan_id, key in list(unfinished):
                st = client.get(f"/v1/scans/{scan_id}", headers={"Authorization": f"Bearer {key}"}).json()
                if st["status"] not in ("queued", "running"):
                    unfinished.discard((scan_id, key))
        return not unfinished

    wait_for(ended, 3600, "every scan to end", interval=1.0)
    marks["end"] = time.monotonic()
    return {"scan_post": percentiles([s[0] for s in started]), "scan_answers": dict(Counter(s[1] for s in started)),
            "upload_answers": dict(uploads), "marks": marks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dfscan", default=DFSCAN, help="the dfscan executable of the checkout to measure")
    parser.add_argument("--model", type=Path, help="the model (default: the tiny test detector)")
    parser.add_argument("--scans", type=int, default=50)
    parser.add_argument("--uploads", type=int, default=64)
    parser.add_argument("--keys", type=int, default=16, help="API keys the uploads and scans are spread over")
    parser.add_argument("--files-per-scan", type=int, default=20)
    parser.add_argument("--log", type=Path, help="keep the server's log here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_serve_load_") as tmp_name:
        tmp = Path(tmp_name)
        model, db_url, keys, storage = _setup(tmp, args)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([args.dfscan, "serve", "--model", str(model), "--db", db_url, "--port", str(port),
                                 "--roots", str(storage), "--runtime", "onnxruntime", "--decoder", "pillow",
                                 "--request-timeout", "600", "--log-level", "warning"],
                                env={**os.environ, "DFSCAN_THREADS": "1"}, stdout=subprocess.DEVNULL,
                                stderr=(args.log or tmp / "serve.log").open("wb"))
        try:
            wait_for(lambda: proc.poll() is None and httpx.get(url + "/readyz", timeout=2).status_code == 200,
                     600, "the server")
            health, rss = HealthWatch(url), RssWatch(proc.pid)
            time.sleep(2.0)
            seen = _load(url, keys, storage, args)
            watched, mb = health.stop(), rss.stop()
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    _report(args, watched, mb, seen)


def _between(watched: list[tuple[float, float | None]], since: float, until: float) -> list[float | None]:
    return [latency for when, latency in watched if since <= when <= until]


def _report(args: argparse.Namespace, watched: list[tuple[float, float | None]], mb: list[float], seen: dict) -> None:
    marks = seen.pop("marks")
    loaded, done = marks["uploads held"], marks["end"]
    idle = [x for x in _between(watched, 0.0, loaded) if x is not None]
    busy = _between(watched, loaded, done)
    result = {
        "dfscan": args.dfscan, "scans": args.scans, "files_per_scan": args.files_per_scan, "uploads": args.uploads,
        "healthz_idle": percentiles(idle),
        "healthz_loaded": {**percentiles([x for x in busy if x is not None]),
                           "unanswered": sum(x is None for x in busy)},
        "rss_mb": {"idle": round(mb[0], 1) if mb else None, "peak": round(max(mb), 1) if mb else None},
        "all_scans_ended_s": round(done - loaded, 1), **seen,
    }
    names = list(marks)
    result["healthz_by_phase"] = {
        name: percentiles([x for x in _between(watched, marks[name], marks[nxt]) if x is not None])
        for name, nxt in zip(names, names[1:])
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"dfscan serve ({args.dfscan}): {args.scans} scans x {args.files_per_scan} images, {args.uploads} uploads held")
    print(f"  /healthz idle   {result['healthz_idle']}")
    print(f"  /healthz loaded {result['healthz_loaded']}")
    for name, lat in result["healthz_by_phase"].items():
        print(f"    while {name:<17} {lat}")
    print(f"  POST /v1/scans  {result['scan_post']} answers {result['scan_answers']}")
    print(f"  uploads         answers {result['upload_answers']}")
    print(f"  server RSS      {result['rss_mb']} MB; every scan ended after {result['all_scans_ended_s']} s")


if __name__ == "__main__":
    main()
