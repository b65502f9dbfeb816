"""Incremental scans: skip files that an earlier scan already scored, unchanged, with the same model.

A file is skipped when its path, size and mtime equal those of an ``ok`` row
of the same model in another scan.  Error rows never count (a file that
failed is tried again), nor do rows of another model.  Paths are looked up a
chunk at a time, so memory stays flat whatever the archive's size.

An ``s3://`` object is unchanged when its size and ETag (the listing's, which
the reader stores in its row too) equal the row's: LastModified has whole
seconds only, so an object rewritten within the same second with the same size
is told apart by its ETag alone.  A row written before migration 0012 has no
etag: its size and LastModified (the row's mtime) are compared.  Objects named
by a path list are asked for them with HEAD requests, a few at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.orm import Session, sessionmaker

from dfscan import db
from dfscan.scanner.objects import ObjectError, ObjectPath, is_object_url, object_store
from dfscan.scanner.paths import on_disk, stat_path

# HEAD requests in flight for the objects of a block that no listing described.
_HEAD_THREADS = 8

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
        stats: dict[str, tuple[int, float, str | None]] = {}
        objects = [p for p in block if is_object_url(p)]
        if objects:
            stats.update(_object_stats(objects))
        for path in block:
            if path in stats or is_object_url(path):
                continue
            try:
                st = stat_path(on_disk(path))
            except OSError:
                continue  # kept: it ends as an error row
            stats[path] = (st.st_size, st.st_mtime, None)
        if not stats:
            return block

        def lookup() -> set[str]:
            with self.sessions() as session:
                return db.unchanged_paths(session, model_id=self.model_id, scan_id=self.scan_id, stats=stats)

        unchanged = self.retry(lookup, "incremental lookup")
        self.skipped += sum(1 for p in block if p in unchanged)
        return [p for p in block if p not in unchanged]


def _object_stats(urls: list[str]) -> dict[str, tuple[int, float, str | None]]:
    """(size, mtime, etag) of each object that answers; the listing's when it had them, else a HEAD request's."""

    def stat(url: str) -> tuple[int, float, str | None] | None:
        try:
            info = url.stat() if isinstance(url, ObjectPath) else object_store().head(url)
        except ObjectError:
            return None  # kept: it ends as an error row
        return info.size, info.mtime, info.etag or None

    asked = [u for u in urls if not (isinstance(u, ObjectPath) and u.info is not None)]
    if len(asked) > 1:
        with ThreadPoolExecutor(min(_HEAD_THREADS, len(asked)), thread_name_prefix="head") as pool:
            found = dict(zip(asked, pool.map(stat, asked)))
    else:
        found = {u: stat(u) for u in asked}
    out = {}
    for url in urls:
        got = found[url] if url in found else stat(url)
        if got is not None:
            out[url] = got
    return out
