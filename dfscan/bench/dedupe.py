"""``dfscan bench --dedupe``: an archive where half the files are byte-copies of the other half, beside one of
as many distinct files.

Two real in-process scans of the same number of files, with the same model:
``distinct`` (every file different) and ``half copies`` (``n/2`` distinct
files, each also present as a byte-for-byte copy under another name).  The
runtime of each scan is warmed up with one batch, then wrapped in a counter
(:class:`CountedRuntime`), so the rows give the images that went through
inference, their seconds, and the scan's own clock (which starts after the
warm-up); the report prints the ratio of the inference seconds (about 0.5:
each distinct image is scored once) measured in this one run.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dfscan.bench import stages
from dfscan.bench.records import Row

__all__ = ["CountedRuntime", "dedupe_rows", "write_half_copies"]


class CountedRuntime:
    """A runtime that counts its ``infer`` calls, the images they carried, and their seconds."""

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime
        self.calls = 0
        self.images = 0
        self.seconds = 0.0

    def infer(self, batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        try:
            return self._runtime.infer(batch)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1
            self.images += int(batch.shape[0])

    def __getattr__(self, name: str) -> Any:  # name, version, precision, device, fixed_batch, close
        return getattr(self._runtime, name)


def counting(into: list, warm: bool = False) -> Callable[[Any], None]:
    """An ``instrument`` hook for :meth:`workers.local.LocalScan.run`: wraps the scan's runtime, keeps the counter.

    ``warm``: first run one uncounted batch of zeros, so that neither scan's count holds the runtime's
    first-call setup (memory arenas): with half the batches, it would weigh twice as much in one of them.
    """

    def instrument(ctx: Any) -> None:
        if warm:
            from dfscan.trt.base import run_batched

            run_batched(ctx.runtime, np.zeros((ctx.batch_size, 3, *ctx.info.input_size), dtype=np.float32))
        ctx.runtime = CountedRuntime(ctx.runtime)
        into.append(ctx.runtime)

    return instrument


def write_half_copies(folder: Path, n: int) -> list[Path]:
    """``n`` files: ``n // 2`` distinct synthetic JPEGs under ``a/`` and a byte copy of each under ``b/``
    (one more distinct file when ``n`` is odd)."""
    originals = stages.write_synthetic(folder / "a", n - n // 2)
    (folder / "b").mkdir(parents=True, exist_ok=True)
    copies = [Path(shutil.copyfile(p, folder / "b" / p.name)) for p in originals[: n // 2]]
    return originals + copies


def dedupe_rows(n: int, work: Path, say: Callable[[str], None],
                scan_settings: Callable[..., Any]) -> tuple[list[Row], dict[str, Any]]:
    """The two scans' rows and the ratio of their inference seconds (half copies over distinct)."""
    stages.write_synthetic(work / "dedupe-distinct", n)
    write_half_copies(work / "dedupe-copies", n)
    rows: list[Row] = []
    measured: dict[str, tuple[CountedRuntime, Any]] = {}
    for variant, folder, db_name in (("distinct", "dedupe-distinct", "dedupe-distinct.db"),
                                     ("half copies", "dedupe-copies", "dedupe-copies.db")):
        label = f"end-to-end, {variant}"
        say(f"scan, {variant}")
        counters: list[CountedRuntime] = []
        try:
            run = stages.measure_scan(scan_settings(db_name), work / folder, instrument=counting(counters, warm=True))
        except Exception as exc:  # noqa: BLE001 - a row that failed, the run goes on
            rows.append(Row("scan", label, "failed", reason=str(exc).splitlines()[0][:200]))
            continue
        t, s, counter = run.timing, run.summary, counters[0]
        measured[variant] = (counter, run)
        rows.append(Row("scan", label, "ok", t.images, t.seconds, t.images_per_s, t.peak_rss_mib, t.start_rss_mib, 1,
                        details={"inferred_images": counter.images, "infer_calls": counter.calls,
                                 "infer_seconds": round(counter.seconds, 4), "computed": s.computed,
                                 "copied": s.copied, "reused": s.reused, "ok": s.ok, "errors": s.errors}))
    ratio: dict[str, Any] = {}
    if len(measured) == 2:
        (d, d_run), (c, c_run) = measured["distinct"], measured["half copies"]
        ratio = {"files": n, "infer_seconds_distinct": round(d.seconds, 4), "infer_seconds_half_copies":
                 round(c.seconds, 4), "inferred_distinct": d.images, "inferred_half_copies": c.images,
                 "scan_seconds_distinct": round(d_run.timing.seconds, 4),
                 "scan_seconds_half_copies": round(c_run.timing.seconds, 4)}
        if d.seconds > 0:
            ratio["infer_seconds_ratio"] = round(c.seconds / d.seconds, 4)
        if d_run.timing.seconds > 0:
            ratio["scan_seconds_ratio"] = round(c_run.timing.seconds / d_run.timing.seconds, 4)
    return rows, ratio


def format_dedupe(ratio: dict[str, Any]) -> list[str]:
    """The report's lines for the two scans."""
    if not ratio:
        return []
    lines = [f"dedupe: {ratio['files']} files, half of them byte copies of the other half: inference "
             f"{ratio['infer_seconds_half_copies']:.2f} s for {ratio['inferred_half_copies']} images vs "
             f"{ratio['infer_seconds_distinct']:.2f} s for {ratio['inferred_distinct']} when all are distinct"]
    if "infer_seconds_ratio" in ratio:
        lines.append(f"  inference time, half copies / distinct = {ratio['infer_seconds_ratio']:.3f}"
                     + (f"; whole scan {ratio['scan_seconds_ratio']:.3f}" if "scan_seconds_ratio" in ratio else ""))
    return lines
