"""The embedded default: walk, score and write in this process.

No broker: the walker's chunks go straight into the pipeline.  The scan is
recorded exactly as a distributed one is (a scan row, its chunks, one result
row per path), so everything downstream (results, reports, SQL) is the same.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from dfscan import db
from dfscan.scanner import ScanSource
from dfscan.scanner.confine import confined_roots
from dfscan.scanner.incremental import IncrementalFilter
from dfscan.core.settings import Settings
from dfscan.workers.scoring.context import ScanContext
from dfscan.workers.scoring.loop import BatchHook, run_local_scan
from dfscan.workers.scoring.registration import register_scan

__all__ = ["LocalScan"]


class LocalScan:
    def __init__(self, settings: Settings, source: ScanSource, *, name: str | None = None,
                 incremental: bool = False) -> None:
        self.settings = settings
        self.source = source
        self.name = name or source.default_name()
        self.incremental = incremental
        self.skipped = 0
        self.warnings: list[str] = []
        self.scan_id: int | None = None
        self.model_id: int | None = None

    def _skipped(self, path: str, reason: str) -> None:
        self.warnings.append(f"{path}: {reason}; files under it were not scanned")

    def run(self, *, stop: threading.Event | None = None, on_batch: BatchHook | None = None,
            instrument: Callable[[ScanContext], None] | None = None) -> db.ScanSummary:
        """Register, score every path, finish the scan; ``on_batch`` sees each batch's rows and timings.

        ``instrument`` sees the context once it is open: the bench and the tests wrap its runtime to
        time or count inference.
        """
        ctx = ScanContext.open(self.settings)
        try:
            if instrument is not None:
                instrument(ctx)
            self.register(ctx)
            return self.score(ctx, stop=stop, on_batch=on_batch)
        finally:
            ctx.close()

    def register(self, ctx: ScanContext) -> int:
        """The scan's row (status ``running``) and this process's worker record, committed; the scan's id.

        The service registers a scan when it is asked for and scores it once a slot is free, on the
        context every scan of the process shares.
        """
        with ctx.sessions.begin() as session:
            scan = register_scan(session, self.settings, ctx.info, self.source, name=self.name, mode="embedded",
                                 incremental=self.incremental, runtime=ctx.runtime_record())
            ctx.record_worker(session, scan.scan_id)
        self.scan_id, self.model_id = scan.scan_id, scan.model_id
        return scan.scan_id

    def score(self, ctx: ScanContext, *, stop: threading.Event | None = None,
              on_batch: BatchHook | None = None) -> db.ScanSummary:
        """Walk, score and finish the registered scan on ``ctx`` (left open: it may be shared)."""
        assert self.scan_id is not None and self.model_id is not None, "register the scan first"
        scan_id, model_id = self.scan_id, self.model_id
        paths = self.source.paths(on_skip=self._skipped)
        skip = None
        if self.incremental:
            # Files an earlier scan scored, unchanged, with this model are left out.
            skip = IncrementalFilter(ctx.sessions, model_id=model_id, scan_id=scan_id, batch=self.settings.chunk_size)
            paths = skip(paths)
        status = "failed"
        try:
            # A walk that follows no link reads no file through one (a directory swapped after the walk).
            roots = confined_roots(self.source.roots, self.source.options.follow_symlinks)
            finished = run_local_scan(ctx, scan_id, model_id, paths, on_batch=on_batch, stop=stop, roots=roots)
            status = "completed" if finished else "cancelled"
        finally:
            self.skipped = skip.skipped if skip is not None else 0
            with ctx.sessions.begin() as session:
                if status == "completed":
                    n_chunks = db.recorded_chunks(session, scan_id)
                    db.mark_walk_done(session, scan_id, n_chunks=n_chunks, skipped=self.skipped)
                db.finish_scan(session, scan_id=scan_id, status=status)
        with ctx.sessions() as session:
            return db.scan_summary(session, scan_id)
