"""``dfscan bench --dedupe``: an archive where half the files are byte-copies of the other half, beside one of
as many distinct files.

Real in-process scans of the same number of files, with the same model:
``distinct`` (every file different) and ``half copies`` (``n/2`` distinct
files, each also present as a byte-for-byte copy under another name), each
twice, in the order A B B A (:data:`ORDER`).  The
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
from dfscan.core.errors import first_line
from dfscan.bench.records import Row

__all__ = ["ORDER", "CountedRuntime", "counting", "dedupe_rows", "format_dedupe", "write_half_copies"]


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
    """An ``instrument`` hook for :meth:`workers.scoring.local.LocalScan.run`: wraps the scan's runtime, keeps the counter.

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


# The scans run in the order A B B A: on a shared machine whose load drifts, each variant gets an early and a
# late turn, and the sums compare like with like.
ORDER = ("distinct", "half copies", "half copies", "distinct")


def dedupe_rows(n: int, work: Path, say: Callable[[str], None],
                scan_settings: Callable[..., Any]) -> tuple[list[Row], dict[str, Any]]:
    """One row per variant (its two scans summed) and the ratio of their inference seconds (half copies over
    distinct)."""
    folders = {"distinct": work / "dedupe-distinct", "half copies": work / "dedupe-copies"}
    stages.write_synthetic(folders["distinct"], n)
    write_half_copies(folders["half copies"], n)
    runs: dict[str, list[tuple[CountedRuntime, Any]]] = {v: [] for v in folders}
    failed: dict[str, str] = {}
    for turn, variant in enumerate(ORDER):
        if variant in failed:
            continue
        say(f"scan, {variant} ({len(runs[variant]) + 1} of 2)")
        counters: list[CountedRuntime] = []
        try:
            run = stages.measure_scan(scan_settings(f"dedupe-{turn}.db"), folders[variant],
                                      instrument=counting(counters, warm=True))
        except Exception as exc:  # noqa: BLE001 - a row that failed, the run goes on
            failed[variant] = first_line(exc)
            continue
        runs[variant].append((counters[0], run))
    rows: list[Row] = []
    totals: dict[str, dict[str, Any]] = {}
    for variant, done in runs.items():
        label = f"end-to-end, {variant}"
        if variant in failed:
            rows.append(Row("scan", label, "failed", reason=failed[variant]))
            continue
        images = sum(r.timing.images for _, r in done)
        seconds = sum(r.timing.seconds for _, r in done)
        last = done[-1][1].summary
        t = {"infer_seconds": sum(c.seconds for c, _ in done), "inferred_images": sum(c.images for c, _ in done),
             "infer_calls": sum(c.calls for c, _ in done), "scan_seconds": seconds}
        totals[variant] = t
        rows.append(Row("scan", label, "ok", images, seconds, images / seconds if seconds > 0 else 0.0,
                        max(r.timing.peak_rss_mib for _, r in done), done[0][1].timing.start_rss_mib, len(done),
                        details={**{k: round(v, 4) for k, v in t.items()}, "computed": last.computed,
                                 "copied": last.copied, "reused": last.reused, "ok": last.ok, "errors": last.errors}))
    ratio: dict[str, Any] = {}
    if len(totals) == 2:
        d, c = totals["distinct"], totals["half copies"]
        ratio = {"files": n, "scans_each": len(runs["distinct"]),
                 "infer_seconds_distinct": round(d["infer_seconds"], 6),
                 "infer_seconds_half_copies": round(c["infer_seconds"], 6),
                 "inferred_distinct": d["inferred_images"], "inferred_half_copies": c["inferred_images"],
                 "scan_seconds_distinct": round(d["scan_seconds"], 4),
                 "scan_seconds_half_copies": round(c["scan_seconds"], 4)}
        if d["infer_seconds"] > 0:
            ratio["infer_seconds_ratio"] = round(c["infer_seconds"] / d["infer_seconds"], 4)
        if d["scan_seconds"] > 0:
            ratio["scan_seconds_ratio"] = round(c["scan_seconds"] / d["scan_seconds"], 4)
    return rows, ratio


def format_dedupe(ratio: dict[str, Any]) -> list[str]:
    """The report's lines for the two scans."""
    if not ratio:
        return []
    lines = [f"dedupe: {ratio['files']} files, half of them byte copies of the other half, {ratio['scans_each']} "
             f"scans each (A B B A): inference {ratio['infer_seconds_half_copies']:.2f} s for "
             f"{ratio['inferred_half_copies']} images vs {ratio['infer_seconds_distinct']:.2f} s for "
             f"{ratio['inferred_distinct']} when all are distinct"]
    if "infer_seconds_ratio" in ratio:
        lines.append(f"  inference time, half copies / distinct = {ratio['infer_seconds_ratio']:.3f}"
                     + (f"; whole scan {ratio['scan_seconds_ratio']:.3f}" if "scan_seconds_ratio" in ratio else ""))
    return lines
