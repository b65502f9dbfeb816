"""Named errors of the database layer; only the CLI turns them into messages."""

from __future__ import annotations

__all__ = ["ChunkNotFound", "DatabaseError", "DatabaseURLError", "NotInScan", "PruneRefused", "ScanNotFound",
           "ScanRunning", "UnknownDecision"]


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


class ScanRunning(DatabaseError):
    """A scan asked to be pruned is still running (its workers would go on writing rows)."""

    def __init__(self, scan_id: int) -> None:
        super().__init__(f"scan {scan_id} is still running")
        self.scan_id = scan_id


class PruneRefused(DatabaseError, ValueError):
    """A prune request that names no scans: neither an age nor scan ids."""


class NotInScan(DatabaseError, LookupError):
    """A review names a path that has no result row in its scan."""

    def __init__(self, scan_id: int, path: str) -> None:
        super().__init__(f"scan {scan_id} has no file {path!r}")
        self.scan_id = scan_id
        self.path = path


class UnknownDecision(DatabaseError, ValueError):
    """A review's decision, order or filter is not one dfscan knows."""
