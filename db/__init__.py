"""Verdicts in SQL: engines, migrations, scans, chunks and their attempts, result rows.

Callers mostly get plain values (``ResultRow``,
``ScanSummary``, ``ScanHead``, ...). Nothing here commits except
:func:`retry_db`, which runs a whole unit of work; the caller owns the
transaction.

One concept a module: ``engine`` (engines and sessions), ``retry`` (retrying a
unit of work), ``migrate``, ``models`` and ``records`` (ORM tables, plain
values), ``scans`` (a scan's rows, lookup, end and summary), ``chunks`` (a
scan's chunks and their attempts), ``leases`` (who scores a chunk, the
reaper), ``results`` (writing and reading result rows; ``_pgcopy``, its COPY
path), ``content`` (what earlier rows already tell about a file),
``explanations``, ``api_keys`` and ``callbacks`` (`dfscan serve`).  This face
exports what most callers need; the rest is imported from its module.
"""

from . import models
from ._env import url_from_env
from ._types import utcnow
from .chunks import (
    ChunkStart,
    add_chunk,
    add_chunks,
    chunk_paths,
    close_lost_chunk,
    finish_chunk,
    finished_among,
    recorded_chunks,
    start_attempt,
    unfinished_chunks,
)
from .content import KnownVerdict, known_verdicts, unchanged_paths
from .engine import make_engine, session_factory
from .errors import ChunkNotFound, DatabaseError, DatabaseURLError, NotInScan, ScanNotFound, UnknownDecision
from .explanations import Explanation, ExplanationRow, explanations_for, write_explanations
from .migrate import downgrade, upgrade
from .provenance import iter_provenance
from .records import FINISHED, FaceRow, FrameRow, ProvenanceRow, ResultRow, ScanSummary
from .results import existing_paths, iter_faces, iter_frames, iter_results, write_batch
from ._views import view_select
from .retry import is_transient, retry_db
from .reviews import DECISIONS, QueueFilters, ReviewedItem, current_decisions, history, queue, record_decision
from .scans import (
    ScanHead,
    cancel_scan,
    create_scan,
    find_scan_by_name,
    finish_scan,
    get_or_create_model,
    latest_scan_id,
    mark_walk_done,
    maybe_complete_scan,
    record_worker,
    scan_audit,
    scan_head,
    scan_summary,
)

__all__ = [
    "DECISIONS",
    "FINISHED",
    "QueueFilters",
    "ReviewedItem",
    "current_decisions",
    "history",
    "queue",
    "record_decision",
    "ChunkNotFound",
    "ChunkStart",
    "DatabaseError",
    "DatabaseURLError",
    "Explanation",
    "KnownVerdict",
    "ExplanationRow",
    "FaceRow",
    "FrameRow",
    "ProvenanceRow",
    "ResultRow",
    "ScanHead",
    "ScanNotFound",
    "NotInScan",
    "UnknownDecision",
    "ScanSummary",
    "add_chunk",
    "add_chunks",
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
    "iter_provenance",
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
    "url_from_env",
    "utcnow",
    "view_select",
    "write_batch",
    "write_explanations",
]
