"""The embedded default: walk, score and write in this process.

No broker: the walker's chunks go straight into the pipeline.  The scan is
recorded exactly as a distributed one is (a scan row, its chunks, one result
row per path), so everything downstream (results, reports, SQL) is the same.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

from dfscan import db
from dfscan.db import distributed as dist
from dfscan.db.records import ResultRow
from dfscan.settings import Settings
from dfscan.scanner import WalkOptions, count_files, read_path_list, walk
from dfscan.scanner.incremental import IncrementalFilter
from dfscan.workers.producer import default_name
from dfscan.workers.context import ScanContext
from dfscan.workers.pipeline import run_local_scan


class LocalScan:
    def __init__(
        self,
        settings: Settings,
        roots: list[str],
        path_lists: list[str],
        options: WalkOptions,
        *,
        name: str | None = None,
        incremental: bool = False,
    ) -> None:
        self.settings = settings
        self.roots = roots
        self.path_lists = path_lists
        self.options = options
        self.name = name or default_name(roots, path_lists)
        self.incremental = incremental
        self.skipped = 0
        self.warnings: list[str] = []
        self.scan_id: int | None = None

    def paths(self) -> Iterator[str]:
        walked = walk(self.roots, self.options, on_skip=self._skipped)
        listed = (read_path_list(source) for source in self.path_lists)
        return itertools.chain(walked, itertools.chain.from_iterable(listed))

    def _skipped(self, path: str, reason: str) -> None:
        self.warnings.append(f"{path}: {reason}; files under it were not scanned")

    def run(self, *, stop: threading.Event | None = None, progress: bool = False) -> "db.ScanSummary":
        ctx = ScanContext.open(self.settings)
        try:
            model_id = ctx.register_model()
            with ctx.sessions.begin() as session:
                self.scan_id = db.create_scan(
                    session,
                    name=self.name,
                    roots=self.roots + [f"@{p}" for p in self.path_lists],
                    model_id=model_id,
                    threshold=ctx.verdict.threshold,
                    settings={**ctx.audit(), "incremental": self.incremental},
                )
                ctx.record_worker(session, self.scan_id)
            paths = self.paths()
            skip = None
            if self.incremental:
                # Files an earlier scan scored, unchanged, with this model are left out.
                skip = IncrementalFilter(ctx.sessions, model_id=model_id, scan_id=self.scan_id,
                                         batch=self.settings.chunk_size)
                paths = skip(paths)
            bar = _ProgressBar(self.roots if not self.path_lists else None, self.options) if progress else None
            status = "failed"
            try:
                finished = run_local_scan(
                    ctx, self.scan_id, model_id, paths, on_batch=bar.update if bar else None, stop=stop
                )
                status = "completed" if finished else "cancelled"
            finally:
                if bar is not None:
                    bar.close()
                self.skipped = skip.skipped if skip is not None else 0
                with ctx.sessions.begin() as session:
                    if skip is not None:
                        n_chunks = dist.recorded_chunks(session, self.scan_id)
                        dist.mark_walk_done(session, self.scan_id, n_chunks=n_chunks, skipped=self.skipped)
                    db.finish_scan(session, scan_id=self.scan_id, status=status)
            with ctx.sessions() as session:
                return db.scan_summary(session, self.scan_id)
        finally:
            ctx.close()


class _ProgressBar:
    """tqdm on stderr: images/s, errors, and an ETA once a background count of the roots is known."""

    def __init__(self, roots: list[str] | None, options: WalkOptions) -> None:
        from tqdm import tqdm

        self.bar = tqdm(unit="img", dynamic_ncols=True, smoothing=0.1)
        self.errors = 0
        if roots:
            # Counting walks the tree a second time, in parallel, so the bar has a
            # total (and an ETA) long before the scan has walked everything.
            threading.Thread(target=self._count, args=(roots, options), daemon=True, name="count").start()

    def _count(self, roots: list[str], options: WalkOptions) -> None:
        try:
            self.bar.total = count_files(roots, options)
            self.bar.refresh()
        except Exception:  # noqa: BLE001 - the bar just stays without a total
            pass

    def update(self, rows: list[ResultRow]) -> None:
        self.errors += sum(1 for r in rows if r.status == "error")
        self.bar.set_postfix(errors=self.errors, refresh=False)
        self.bar.update(len(rows))

    def close(self) -> None:
        self.bar.close()
