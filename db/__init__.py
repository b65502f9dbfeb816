"""Verdicts in SQL: engines, migrations, and the reads and writes of a scan."""

from ._env import url_from_env
from .engine import make_engine, session_factory
from .errors import ChunkNotFound, DatabaseError, DatabaseURLError, ScanNotFound
from .migrate import downgrade, upgrade
from .records import ResultRow, ScanSummary
from .results import existing_paths, iter_results, write_batch
from .scans import (
    add_chunk,
    bump_attempts,
    create_scan,
    fail_chunk,
    finish_chunk,
    finish_scan,
    get_or_create_model,
    latest_scan_id,
    record_worker,
    scan_summary,
)

__all__ = [
    "ChunkNotFound",
    "DatabaseError",
    "DatabaseURLError",
    "ResultRow",
    "ScanNotFound",
    "ScanSummary",
    "add_chunk",
    "bump_attempts",
    "create_scan",
    "downgrade",
    "existing_paths",
    "fail_chunk",
    "finish_chunk",
    "finish_scan",
    "get_or_create_model",
    "iter_results",
    "latest_scan_id",
    "make_engine",
    "record_worker",
    "scan_summary",
    "session_factory",
    "upgrade",
    "url_from_env",
]
