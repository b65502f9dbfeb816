"""Named errors of the database layer; only the CLI turns them into messages."""

from __future__ import annotations

__all__ = ["ChunkNotFound", "DatabaseError", "DatabaseURLError", "ScanNotFound"]


class DatabaseError(Exception):
    """Base class of every error raised by :mod:`db`."""


class DatabaseURLError(DatabaseError, ValueError):
    """The database URL cannot be parsed or names a driver dfscan does not support."""


class ScanNotFound(DatabaseError, LookupError):
    """No scan has the requested id."""

    def __init__(self, scan_id: int) -> None:
        super().__init__(f"scan {scan_id} does not exist")
        self.scan_id = scan_id


class ChunkNotFound(DatabaseError, LookupError):
    """No chunk has the requested id."""

    def __init__(self, chunk_id: int) -> None:
        super().__init__(f"chunk {chunk_id} does not exist")
        self.chunk_id = chunk_id
