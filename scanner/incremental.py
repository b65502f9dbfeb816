"""Incremental scans: skip files that an earlier scan already scored, unchanged, with the same model.

A file is skipped when its path, size and mtime equal those of an ``ok`` row
of the same model in another scan.  Error rows never count (a file that
failed is tried again), nor do rows of another model.  Paths are looked up a
chunk at a time, so memory stays flat whatever the archive's size.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

from sqlalchemy.orm import Session, sessionmaker

from dfscan import db
from dfscan.scanner.paths import on_disk, stat_path

__all__ = ["IncrementalFilter"]


class IncrementalFilter:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        model_id: int,
        scan_id: int,
        batch: int = 256,
        retry: Callable | None = None,
    ) -> None:
        self.sessions = sessions
        self.model_id = model_id
        self.scan_id = scan_id
        self.batch = batch
        self.retry = retry or (lambda work, what: work())
        self.skipped = 0

    def __call__(self, paths: Iterable[str]) -> Iterator[str]:
        """``paths`` without the unchanged ones, in the same order."""
        block: list[str] = []
        for path in paths:
            block.append(path)
            if len(block) >= self.batch:
                yield from self._filter(block)
                block = []
        if block:
            yield from self._filter(block)

    def _filter(self, block: list[str]) -> list[str]:
        stats: dict[str, tuple[int, float]] = {}
        for path in block:
            try:
                st = stat_path(on_disk(path))
            except OSError:
                continue  # kept: it ends as an error row
            stats[path] = (st.st_size, st.st_mtime)
        if not stats:
            return block

        def lookup() -> set[str]:
            with self.sessions() as session:
                return db.unchanged_paths(session, model_id=self.model_id, scan_id=self.scan_id, stats=stats)

        unchanged = self.retry(lookup, "incremental lookup")
        self.skipped += sum(1 for p in block if p in unchanged)
        return [p for p in block if p not in unchanged]
