"""What a scan reads: its roots, its path lists and the walk options, and the one stream of paths they give.

The embedded scan and the fleet's producer both take their paths from
:meth:`ScanSource.paths`; the audit record keeps :meth:`ScanSource.record` so
that ``dfscan resume`` can replay the same walk.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from dfscan.scanner.objects import ObjectPath, is_object_url, object_store
from dfscan.scanner.paths import on_disk, storable
from dfscan.scanner.walker import SkipHook, WalkOptions, count_files, read_path_list, walk

__all__ = ["NAME_MAX", "ScanSource"]

# The length of scans.name (varchar(255) on PostgreSQL).
NAME_MAX = 255


@dataclass(frozen=True)
class ScanSource:
    roots: tuple[str, ...]
    path_lists: tuple[str, ...] = ()
    options: WalkOptions = field(default_factory=lambda: WalkOptions(extensions=()))

    def paths(self, on_skip: SkipHook | None = None) -> Iterator[str]:
        """The roots walked in order, then each path list's lines: one stream, read lazily."""
        walked = walk(self.roots, self.options, on_skip=on_skip)
        listed = (read_path_list(source) for source in self.path_lists)
        return itertools.chain(walked, map(self._located, itertools.chain.from_iterable(listed)))

    def _located(self, path: str) -> str:
        """A listed ``s3://`` URL tied to this source's store, so that ``--incremental`` asks the right endpoint."""
        return ObjectPath(path, object_store(self.options.s3_endpoint_url)) if is_object_url(path) else path

    def count(self) -> int | None:
        """How many files the roots hold (a second walk), or None when that is unknowable or dear up front.

        Path lists are read once, as they stream; a bucket is not listed twice (a
        second listing costs requests and the scan's CPU).
        """
        if self.path_lists or any(is_object_url(r) for r in self.roots):
            return None
        return count_files(self.roots, self.options)

    @property
    def stored_roots(self) -> list[str]:
        """The ``scans.roots`` column: roots, and path lists as ``@FILE``."""
        return [storable(r) for r in self.roots] + [f"@{storable(p)}" for p in self.path_lists]

    def default_name(self, now: datetime | None = None, max_len: int = NAME_MAX) -> str:
        """``photos+2 2026-11-25T08:10Z``: the first source and a UTC timestamp, at most ``max_len`` characters.

        A source name too long for the column keeps its start and ends in "…";
        the count of other sources and the timestamp are always kept.
        """
        sources = [os.path.basename(r.rstrip("/")) or r for r in self.roots] + [f"@{p}" for p in self.path_lists]
        more = f"+{len(sources) - 1}" if len(sources) > 1 else ""
        when = f" {(now or datetime.now(timezone.utc)):%Y-%m-%dT%H:%MZ}"
        first = storable(sources[0])
        room = max_len - len(more) - len(when)
        if len(first) > room:
            first = first[: room - 1] + "…"
        return f"{first}{more}{when}"

    def record(self) -> dict[str, Any]:
        """The ``walk`` part of the audit record: enough to walk the same way again."""
        record = {"roots": [storable(r) for r in self.roots], "path_lists": [storable(p) for p in self.path_lists],
                  "extensions": list(self.options.extensions), "follow_symlinks": self.options.follow_symlinks}
        if self.options.s3_endpoint_url:
            # Settings refuse an endpoint with user:password in it: it is safe to keep.
            record["s3_endpoint_url"] = self.options.s3_endpoint_url
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "ScanSource":
        return cls(tuple(on_disk(r) for r in record["roots"]), tuple(on_disk(p) for p in record["path_lists"]),
                   WalkOptions(tuple(record["extensions"]), bool(record["follow_symlinks"]),
                               record.get("s3_endpoint_url")))
