"""Peak memory of a process scanning videos with each runtime (#28 part A): one model session per graph.

    .venv/bin/python tests/bench/sequence_rss.py --model DIR/model.onnx [--videos 6] [--runtime torch ...]

Each runtime scans the same videos in its own ``dfscan scan`` process (the embedded worker); the figure is that
process's peak RSS (``ru_maxrss``) and which runtime each graph ran on, read from the context the scan opens.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests._videos import write_video  # noqa: E402

PROBE = """
import sys
from dfscan.core.settings import from_env
from dfscan.workers.scoring.context import ScanContext
ctx = ScanContext.open(from_env(model=sys.argv[1], db_url=sys.argv[2], runtime=sys.argv[3]))
print({g: type(getattr(r, "inner", r)).__name__ for g, r in ctx.resources.runtimes.items()})
ctx.close()
"""


def peak_rss_mib(cmd: list[str]) -> tuple[int, int, str]:
    """Run ``cmd``; its exit status, its own peak RSS in MiB (``wait4``'s rusage of that child) and its stdout."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.stdout.read(), proc.stderr.read()  # small outputs: read, then reap with its rusage
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss // 1024, out if proc.returncode == 0 else err.strip()[-300:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--runtime", action="append", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dfscan-seq-rss-"))
    videos = work / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    for k in range(args.videos):
        write_video(videos / f"v{k}.mp4", 30, size=(128, 96),
                    draw=lambda i: rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    for runtime in args.runtime or ["onnxruntime", "torch"]:
        db = f"sqlite:///{work / (runtime + '.db')}"
        _, open_mib, graphs = peak_rss_mib([sys.executable, "-c", PROBE, args.model, db, runtime])
        code, scan_mib, out = peak_rss_mib([sys.executable, "-m", "dfscan.cli", "scan", str(videos), "--model",
                                            args.model, "--db", db, "--runtime", runtime, "--json"])
        summary = json.loads(out) if code == 0 else {"errors": out}
        print(f"sequence_rss runtime={runtime} graphs={graphs.strip()} open_peak_rss_mib={open_mib} "
              f"scan_peak_rss_mib={scan_mib} scored={summary.get('total')} errors={summary.get('errors')}", flush=True)


if __name__ == "__main__":
    main()
