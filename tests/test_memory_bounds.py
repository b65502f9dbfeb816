"""Memory is bounded by a byte budget, not by what the files claim: sparse and huge files.

Sixteen sparse 255 MiB "photos" (4 KB on disk each) used to take a scan to
5.9 GB RSS: every file of a batch was read whole before decoding.  Now the
header is read first (a file that is no image, or declares too many pixels, is
refused on it) and the rest is read in rounds that fit the worker's budget.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dfscan.workers.scoring import Stages
from dfscan.workers.scoring.images import ImageStage
from dfscan.workers.images.decode import PillowDecoder, Preprocess
from tests._images import jpeg_bytes, png_header_only, write_jpegs
from tests._models import tiny_onnx_model  # noqa: F401 - fixture

SPARSE_BYTES = 255 * 1024 * 1024
RSS_LIMIT_KB = 1_500_000  # 1.5 GB


def write_sparse(folder: Path, n: int) -> list[Path]:
    """``n`` sparse 255 MiB files named ``*.jpg``: half all zeros, half a real JPEG followed by a hole."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"sparse_{i:02d}.jpg"
        with open(p, "wb") as fh:
            if i % 2:
                fh.write(jpeg_bytes(100 + i, (128, 96)))
            fh.truncate(SPARSE_BYTES)
        out.append(p)
    return out


# Runs the scan as a child of a fresh interpreter, so RUSAGE_CHILDREN is that scan's peak alone.
_MEASURE = """
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": done.returncode, "stderr": done.stderr[-2000:],
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


@pytest.mark.slow  # about 20 s each: two 4 GB sparse sets read through a real scan
@pytest.mark.parametrize("decoder", ["pillow", "dali-cpu"])
def test_sixteen_sparse_files_scan_within_the_memory_bound(tmp_path, tiny_onnx_model, decoder):
    if decoder.startswith("dali"):
        pytest.importorskip("nvidia.dali")
    root = tmp_path / "imgs"
    sparse = write_sparse(root / "sparse", 16)
    normal = write_jpegs(root / "normal", 12)
    db_path = tmp_path / "scan.db"
    scan = [sys.executable, "-m", "dfscan.cli", "scan", str(root), "--model", str(tiny_onnx_model),
            "--db", f"sqlite:///{db_path}", "--decoder", decoder, "--json", "--no-progress"]
    measured = subprocess.run([sys.executable, "-c", _MEASURE, *scan], capture_output=True, text=True, timeout=600)
    report = json.loads(measured.stdout.strip().splitlines()[-1])
    assert report["rc"] == 0, report["stderr"]
    with sqlite3.connect(db_path) as con:
        rows = con.execute("SELECT path, status, error_code, error FROM results").fetchall()
    by_name = {Path(p).name: (status, code, why) for p, status, code, why in rows}
    assert len(rows) == len(by_name) == 28  # one row each, nothing lost, nothing doubled
    for p in sparse[0::2]:  # all zeros: refused from the first bytes, never read whole
        assert by_name[p.name][:2] == ("error", "not-image"), by_name[p.name]
    for p in sparse[1::2]:  # a real JPEG in front of the hole: read within the budget and decoded
        assert by_name[p.name][0] == "ok", by_name[p.name]
    for p in normal:
        assert by_name[p.name][0] == "ok"
    print(f"peak RSS of dfscan scan --decoder {decoder}: {report['maxrss_kb'] / 1e6:.2f} GB")
    assert report["maxrss_kb"] < RSS_LIMIT_KB, f"peak RSS {report['maxrss_kb']} kB"


class _Recording:
    """The real Pillow decoder, noting how many file bytes each decode call was handed."""

    def __init__(self, pre: Preprocess) -> None:
        self.inner = PillowDecoder(pre)
        self.pre = pre
        self.calls: list[int] = []

    def decode_batch(self, files):
        self.calls.append(sum(len(f.data) for f in files))
        return self.inner.decode_batch(files)

    def close(self) -> None:
        self.inner.close()


def test_files_are_read_in_rounds_that_fit_the_budget_and_one_over_it_is_an_error_row(tmp_path):
    budget = 3 << 20
    big = []
    for i in range(5):  # five 1.2 MiB files (a JPEG then padding): at most two fit the budget at once
        p = tmp_path / f"big_{i}.jpg"
        p.write_bytes(jpeg_bytes(i, (200, 150)).ljust(1_200_000, b"\0"))
        big.append(str(p))
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(jpeg_bytes(9).ljust(4 << 20, b"\0"))
    small = [str(p) for p in write_jpegs(tmp_path / "small", 3)]
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(60_000, 60_000))
    decoder = _Recording(Preprocess())
    maker = Stages([ImageStage(decoder, read_threads=4, budget_bytes=budget)])
    try:
        paths = small + big + [str(huge), str(bomb)]
        items = maker.prepare(paths).items
    finally:
        maker.close()
    decoded = [it for it in items if it.payload is not None]
    errors = {i: it.error for i, it in enumerate(items) if it.error is not None}
    assert len(decoded) + len(errors) == len(paths)
    assert len(decoded) == 8 and np.isfinite(np.stack([it.payload.tensor for it in decoded])).all()
    huge_err = errors[paths.index(str(huge))]
    assert huge_err.code == "too-large" and "read budget" in huge_err.message
    assert errors[paths.index(str(bomb))].code == "too-many-pixels"
    assert len(decoder.calls) >= 3 and max(decoder.calls) <= budget + 3 * (256 << 10)
    assert items[paths.index(str(huge))].size == 4 << 20
