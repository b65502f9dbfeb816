"""Group a stream of paths into numbered chunks: the unit of work and of retry."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from dfscan.scanner.paths import storable


@dataclass(frozen=True)
class Chunk:
    """A chunk of a scan: at most ``chunk_size`` paths, numbered from 0.

    ``chunk_id`` is the database id once the chunk is recorded.
    """

    scan_id: int
    seq: int
    paths: tuple[str, ...]
    chunk_id: int | None = None

    def to_message(self) -> dict:
        """The JSON-safe message a queue carries: ids and paths, nothing else."""
        return {"scan_id": self.scan_id, "chunk_id": self.chunk_id, "seq": self.seq, "paths": list(self.paths)}

    @classmethod
    def from_message(cls, message: dict) -> "Chunk":
        return cls(
            scan_id=int(message["scan_id"]),
            seq=int(message["seq"]),
            paths=tuple(str(p) for p in message["paths"]),
            chunk_id=None if message.get("chunk_id") is None else int(message["chunk_id"]),
        )


def chunked(paths: Iterable[str], size: int) -> Iterator[list[str]]:
    """Lists of up to ``size`` paths, de-duplicated within the stream's window.

    The same file named twice (two roots that overlap, a path list with
    repeats) must give one row; a chunk-local set catches the common case,
    and the database's unique key and upsert catch the rest.  Names that are
    not valid UTF-8 are made storable here (see :mod:`scanner.paths`).
    """
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    batch: list[str] = []
    seen: set[str] = set()
    for path in paths:
        path = storable(path)
        if path in seen:
            continue
        seen.add(path)
        batch.append(path)
        if len(batch) == size:
            yield batch
            batch = []
            seen = set()
    if batch:
        yield batch
