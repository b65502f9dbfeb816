"""Verdicts in SQL: engines, migrations, scans, chunks and their attempts, result rows.

Callers mostly get plain values (``ResultRow``,
``ScanSummary``, ``ScanHead``, ...). Nothing here commits except
:func:`retry_db`, which runs a whole unit of work; the caller owns the
transaction.
"""

from . import models
from ._env import url_from_env
from .chunks import (
    FINISHED,
    ChunkStart,
    ScanHead,
    cancel_scan,
    chunk_paths,
    close_lost_chunk,
    find_scan_by_name,
    finished_among,
    is_transient,
    mark_walk_done,
    maybe_complete_scan,
    recorded_chunks,
    retry_db,
    scan_audit,
    scan_head,
    start_attempt,
    unchanged_paths,
    unfinished_chunks,
)
from .content import KnownVerdict, known_verdicts
from .engine import make_engine, session_factory
from .explanations import Explanation, ExplanationRow, explanations_for, write_explanations
from .errors import ChunkNotFound, DatabaseError, DatabaseURLError, ScanNotFound
from .migrate import downgrade, upgrade
from .records import FaceRow, FrameRow, ResultRow, ScanSummary
from .results import existing_paths, iter_faces, iter_frames, iter_results, write_batch
from .scans import (
    add_chunk,
    create_scan,
    finish_chunk,
    finish_scan,
    get_or_create_model,
    latest_scan_id,
    record_worker,
    scan_summary,
)

__all__ = [
    "FINISHED",
    "ChunkNotFound",
    "ChunkStart",
    "DatabaseError",
    "DatabaseURLError",
    "Explanation",
    "KnownVerdict",
    "ExplanationRow",
    "FaceRow",
    "FrameRow",
    "ResultRow",
    "ScanHead",
    "ScanNotFound",
    "ScanSummary",
    "add_chunk",
    "cancel_scan",
    "chunk_paths",
    "close_lost_chunk",
    "create_scan",
    "downgrade",
    "existing_paths",
    "explanations_for",
    "find_scan_by_name",
    "finish_chunk",
    "finish_scan",
    "finished_among",
    "get_or_create_model",
    "is_transient",
    "iter_faces",
    "iter_frames",
    "iter_results",
    "known_verdicts",
    "latest_scan_id",
    "make_engine",
    "mark_walk_done",
    "maybe_complete_scan",
    "models",
    "record_worker",
    "recorded_chunks",
    "retry_db",
    "scan_audit",
    "scan_head",
    "scan_summary",
    "session_factory",
    "start_attempt",
    "unchanged_paths",
    "unfinished_chunks",
    "upgrade",
    "write_explanations",
    "url_from_env",
    "write_batch",
]
