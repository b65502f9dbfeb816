"""The fixed-size key of a stored path: every table keyed by a scan's file uses it, never the path itself.

A btree entry holds at most about 2,700 bytes, and paths have no such limit; a 16-byte key does. The
hash is of the path as stored (valid UTF-8; ``scanner.paths`` escapes undecodable bytes), so PostgreSQL
computes the same value in SQL: ``substring(sha256(convert_to(path, 'UTF8')) from 1 for 16)``.
"""

from __future__ import annotations

import hashlib

__all__ = ["PATH_HASH_BYTES", "PATH_HASH_SQL", "path_hash"]

PATH_HASH_BYTES = 16
# The same function in PostgreSQL (11+), for migrations and ad hoc lookups: {col} is the path column.
PATH_HASH_SQL = "substring(sha256(convert_to({col}, 'UTF8')) from 1 for 16)"


def path_hash(path: str) -> bytes:
    """The first 16 bytes of the SHA-256 of the stored path's UTF-8."""
    return hashlib.sha256(path.encode("utf-8")).digest()[:PATH_HASH_BYTES]
