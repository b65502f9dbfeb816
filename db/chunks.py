"""Chunks and their attempts, the walk's state, scan completion, incremental lookups, retrying a unit of work.

The database is the source of truth of a distributed scan: the broker only
carries messages, and may lose them (a Redis restart without persistence).
Everything ``dfscan resume``, ``status`` and the workers need to decide what
is left is answered here; the embedded mode records its scans the same way.
Like :mod:`dfscan.db.scans`, nothing here commits except :func:`retry_db`,
which runs a whole unit of work.

The walk's state (whether it has finished, how many chunks it recorded, how
many files an incremental scan skipped) is in columns of ``scans``; the scan's
``settings`` document is its audit record and is written once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import String, bindparam, func, or_, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from ._dialects import dialect_name
from ._types import utcnow
from .errors import ChunkNotFound, ScanNotFound
from .models import Chunk, Model, Result, Scan
from .records import ResultRow
from .results import existing_paths, write_batch
from .scans import finish_scan

__all__ = [
    "FINISHED",
    "REQUEUE_OWNER_PREFIX",
    "ChunkStart",
    "LeaseRecord",
    "ReapedChunk",
    "ScanHead",
    "cancel_scan",
    "chunk_paths",
    "claim_chunk",
    "clear_requeue_leases",
    "lease_records",
    "reap_expired_leases",
    "release_lease",
    "renew_lease",
    "close_lost_chunk",
    "finished_among",
    "find_scan_by_name",
    "is_transient",
    "mark_walk_done",
    "maybe_complete_scan",
    "recorded_chunks",
    "retry_db",
    "scan_audit",
    "scan_head",
    "start_attempt",
    "unchanged_paths",
    "unfinished_chunks",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

FINISHED = ("done", "failed")
_IN_LIST_SIZE = 500


# --- retrying a unit of work -------------------------------------------------------


def is_transient(exc: BaseException) -> bool:
    """A failure that a later attempt can get past: lost connection, server restart, lock, serialization."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def retry_db(
    work: Callable[[], T],
    *,
    deadline_s: float,
    what: str = "database work",
    first_delay_s: float = 0.25,
    max_delay_s: float = 8.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``work`` (one whole transaction), retrying transient errors with exponential back-off.

    ``work`` must be safe to run again from the start: every write of a scan is
    an upsert or a set (never an increment that a lost COMMIT reply would
    double), except the attempt counter, where one extra count is harmless.
    The last error is re-raised once ``deadline_s`` has passed.
    """
    start = time.monotonic()
    delay = first_delay_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return work()
        except Exception as exc:  # noqa: BLE001 - filtered just below
            if not is_transient(exc):
                raise
            waited = time.monotonic() - start
            if waited >= deadline_s:
                raise
            pause = min(delay, max_delay_s, max(0.0, deadline_s - waited)) * random.uniform(0.8, 1.2)
            log.warning("%s failed (attempt %d, %s); retrying in %.1f s", what, attempt, _short(exc), pause)
            sleep(pause)
            delay *= 2


def _short(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {text[0] if text else ''}"[:200]


# --- a scan, as a worker sees it ---------------------------------------------------


@dataclass(frozen=True)
class ScanHead:
    """What a worker needs to know about the scan a chunk belongs to."""

    scan_id: int
    status: str
    model_id: int
    model_sha256: str
    model_path: str
    threshold: float
    walk_done: bool = False
    n_chunks: int | None = None
    skipped: int = 0


def scan_head(session: Session, scan_id: int) -> ScanHead:
    row = session.execute(
        select(Scan.status, Scan.model_id, Model.sha256, Model.path, Scan.threshold, Scan.walk_done, Scan.n_chunks,
               Scan.skipped)
        .join(Model, Model.id == Scan.model_id)
        .where(Scan.id == scan_id)
    ).one_or_none()
    if row is None:
        raise ScanNotFound(scan_id)
    return ScanHead(scan_id, row.status, row.model_id, row.sha256, row.path, row.threshold, row.walk_done,
                    row.n_chunks, row.skipped)


def scan_audit(session: Session, scan_id: int) -> dict:
    """The scan's audit record (``scans.settings``): how it was started, with what."""
    settings = session.execute(select(Scan.settings).where(Scan.id == scan_id)).scalar_one_or_none()
    if settings is None:
        raise ScanNotFound(scan_id)
    return dict(settings)


def find_scan_by_name(session: Session, name: str) -> int | None:
    return session.execute(select(func.min(Scan.id)).where(Scan.name == name)).scalar_one()


@dataclass(frozen=True)
class ChunkStart:
    status: str
    attempts: int
    scan_status: str
    # A live holder of the chunk's lease other than the caller: the delivery is not
    # counted and the chunk is not the caller's to score.
    leased_by: str | None = None
    # What a worker needs to know about the chunk's scan (claim_chunk reads it with the chunk).
    head: ScanHead | None = None


def start_attempt(session: Session, chunk_id: int) -> ChunkStart:
    """Count one more delivery of a chunk; return its state and its scan's."""
    attempts = session.execute(
        update(Chunk.__table__)
        .where(Chunk.__table__.c.id == chunk_id)
        .values(attempts=Chunk.__table__.c.attempts + 1)
        .returning(Chunk.__table__.c.attempts)
    ).scalar_one_or_none()
    if attempts is None:
        raise ChunkNotFound(chunk_id)
    status, scan_status = session.execute(
        select(Chunk.status, Scan.status).join(Scan, Scan.id == Chunk.scan_id).where(Chunk.id == chunk_id)
    ).one()
    return ChunkStart(status, attempts, scan_status)


def close_lost_chunk(
    session: Session, *, chunk_id: int, scan_id: int, model_id: int, paths: Sequence[str], reason: str
) -> int:
    """End a chunk that kept failing: an ``error`` row (``worker-lost``) for each path without a result.

    Rows that earlier attempts committed are kept.  The chunk ends ``failed``
    with counts taken from its rows, so the scan's totals still add up.
    Returns the number of error rows written.
    """
    done = existing_paths(session, scan_id, list(paths))
    now = utcnow()
    rows = [
        ResultRow.error_row(p, None, None, "worker-lost", reason, now)
        for p in dict.fromkeys(paths)
        if p not in done
    ]
    write_batch(session, scan_id=scan_id, model_id=model_id, rows=rows)
    ok, real, fake, errors = _chunk_counts(session, scan_id, paths)
    result = session.execute(
        update(Chunk)
        .where(Chunk.id == chunk_id)
        .values(status="failed", ok=ok, real=real, fake=fake, errors=errors, last_error=reason, finished_at=now)
    )
    if result.rowcount == 0:
        raise ChunkNotFound(chunk_id)
    return len(rows)


def _chunk_counts(session: Session, scan_id: int, paths: Sequence[str]) -> tuple[int, int, int, int]:
    ok = real = fake = errors = 0
    unique = list(dict.fromkeys(paths))
    for start in range(0, len(unique), _IN_LIST_SIZE):
        for status, label in session.execute(
            select(Result.status, Result.label).where(
                Result.scan_id == scan_id, Result.path.in_(unique[start : start + _IN_LIST_SIZE])
            )
        ):
            if status == "ok":
                ok += 1
                real += label == "real"
                fake += label == "fake"
            else:
                errors += 1
    return ok, real, fake, errors


# --- leases: a chunk being scored, and the reaper of chunks whose worker vanished ---------

# The lease owner a reaper writes while it re-enqueues a chunk; a worker may always take it over.
REQUEUE_OWNER_PREFIX = "requeue:"


# The statements of a claim, built once: a chunk's claim is per delivery, and building and
# caching an ORM statement each time costs more than the database does.
_CHUNKS = Chunk.__table__
_SCANS = Scan.__table__
_MODELS = Model.__table__
_CLAIM_READ = (
    select(_CHUNKS.c.status, _CHUNKS.c.lease_owner, _CHUNKS.c.lease_until, _CHUNKS.c.attempts,
           _SCANS.c.status.label("scan_status"), _CHUNKS.c.scan_id, _SCANS.c.model_id, _MODELS.c.sha256,
           _MODELS.c.path.label("model_path"), _SCANS.c.threshold, _SCANS.c.walk_done, _SCANS.c.n_chunks,
           _SCANS.c.skipped)
    .select_from(_CHUNKS.join(_SCANS, _SCANS.c.id == _CHUNKS.c.scan_id).join(_MODELS, _MODELS.c.id == _SCANS.c.model_id))
    .where(_CHUNKS.c.id == bindparam("chunk_id"))
)
_CLAIM_COUNT = (
    update(_CHUNKS).where(_CHUNKS.c.id == bindparam("chunk_id"))
    .values(attempts=_CHUNKS.c.attempts + 1).returning(_CHUNKS.c.attempts)
)
_CLAIM_TAKE = (
    update(_CHUNKS)
    .where(
        _CHUNKS.c.id == bindparam("chunk_id"),
        or_(_CHUNKS.c.lease_until.is_(None),
            _CHUNKS.c.lease_until == bindparam("read_until", type_=_CHUNKS.c.lease_until.type)),
        or_(_CHUNKS.c.lease_owner.is_(None), _CHUNKS.c.lease_owner == bindparam("read_owner", type_=String())),
    )
    .values(attempts=_CHUNKS.c.attempts + 1, lease_owner=bindparam("owner", type_=String()),
            lease_until=bindparam("until", type_=_CHUNKS.c.lease_until.type))
    .returning(_CHUNKS.c.attempts)
)


def claim_chunk(
    session: Session,
    chunk_id: int,
    *,
    owner: str,
    lease_s: float,
    holder_alive: Callable[[str], bool],
    now: datetime | None = None,
) -> ChunkStart:
    """Count one more delivery of a chunk and take its lease, unless a live holder has it.

    The lease is free when it has none, it ran out, it is the caller's, a
    reaper holds it while it re-enqueues the chunk, or ``holder_alive(owner)``
    says its holder is gone (a pool process of this host killed mid-chunk).
    Otherwise the delivery is a stale copy of a chunk someone else scores:
    nothing is counted and ``leased_by`` names the holder.  The take-over is a
    conditional UPDATE, so of two claims racing only one wins.
    """
    row = session.execute(_CLAIM_READ, {"chunk_id": chunk_id}).one_or_none()
    if row is None:
        raise ChunkNotFound(chunk_id)
    head = ScanHead(row.scan_id, row.scan_status, row.model_id, row.sha256, row.model_path, row.threshold,
                    row.walk_done, row.n_chunks, row.skipped)
    now = now or utcnow()
    scoring = row.status not in FINISHED and row.scan_status == "running"
    if scoring:
        held = (
            row.lease_until is not None
            and row.lease_until > now
            and row.lease_owner not in (None, owner)
            and not row.lease_owner.startswith(REQUEUE_OWNER_PREFIX)
        )
        if held and holder_alive(row.lease_owner):
            return ChunkStart(row.status, row.attempts, row.scan_status, leased_by=row.lease_owner, head=head)
        # Taken only if nobody renewed or took the lease since it was read.
        attempts = session.execute(_CLAIM_TAKE, {
            "chunk_id": chunk_id, "owner": owner, "until": now + timedelta(seconds=lease_s),
            "read_until": row.lease_until, "read_owner": row.lease_owner,
        }).scalar_one_or_none()
    else:
        attempts = session.execute(_CLAIM_COUNT, {"chunk_id": chunk_id}).scalar_one_or_none()
    if attempts is None:
        current = session.execute(select(Chunk.lease_owner).where(Chunk.id == chunk_id)).scalar_one_or_none()
        return ChunkStart(row.status, row.attempts, row.scan_status, leased_by=current or "another worker", head=head)
    return ChunkStart(row.status, attempts, row.scan_status, head=head)


def renew_lease(session: Session, chunk_id: int, *, owner: str, lease_s: float, now: datetime | None = None) -> bool:
    """Push the caller's lease ``lease_s`` ahead; False if the chunk is no longer leased to it."""
    now = now or utcnow()
    result = session.execute(
        update(Chunk)
        .where(Chunk.id == chunk_id, Chunk.lease_owner == owner, Chunk.status == "queued")
        .values(lease_until=now + timedelta(seconds=lease_s))
    )
    return result.rowcount == 1


def release_lease(session: Session, chunk_id: int, *, owner: str) -> None:
    """End the caller's lease (the chunk is done, or given back): the owner stays, as who last held it."""
    session.execute(update(Chunk).where(Chunk.id == chunk_id, Chunk.lease_owner == owner).values(lease_until=None))


@dataclass(frozen=True)
class ReapedChunk:
    chunk_id: int
    scan_id: int
    seq: int
    paths: list[str]
    expired_owner: str | None


def reap_expired_leases(
    session: Session, *, reaper: str, lease_s: float, now: datetime | None = None, limit: int = 100
) -> list[ReapedChunk]:
    """Take the chunks of running scans whose lease ran out, for the caller to re-enqueue.

    Each is leased to ``requeue:<reaper>`` for ``lease_s`` while the caller
    publishes it (then :func:`clear_requeue_leases`): of several reapers, only
    the one whose UPDATE matched re-enqueues a given expiry, and a reaper that
    dies before publishing lets the lease run out again.  The expiry acted on,
    the time and the count of re-enqueues are kept for ``dfscan status``.
    """
    now = now or utcnow()
    running = select(Scan.id).where(Scan.status == "running").scalar_subquery()
    candidates = session.execute(
        select(Chunk.id, Chunk.lease_owner)
        .where(Chunk.status == "queued", Chunk.lease_until < now, Chunk.scan_id.in_(running))
        .order_by(Chunk.lease_until, Chunk.id)  # one order for every reaper: no deadlock between two
        .limit(limit)
    ).all()
    out = []
    table = Chunk.__table__
    c = table.c
    for chunk_id, old_owner in candidates:
        row = session.execute(
            update(table)
            .where(c.id == chunk_id, c.status == "queued", c.lease_until < now)
            .values(
                lease_owner=REQUEUE_OWNER_PREFIX + reaper,
                lease_until=now + timedelta(seconds=lease_s),
                lease_expired_at=c.lease_until,
                requeued_at=now,
                requeues=c.requeues + 1,
            )
            .returning(c.scan_id, c.seq, c.paths)
        ).one_or_none()
        if row is not None:
            out.append(ReapedChunk(chunk_id, row.scan_id, row.seq, list(row.paths), old_owner))
    return out


def clear_requeue_leases(session: Session, chunk_ids: Sequence[int], *, reaper: str) -> None:
    """After publishing: the re-enqueued chunks wait in the broker unleased, however long the queue."""
    ids = list(chunk_ids)
    for start in range(0, len(ids), _IN_LIST_SIZE):
        session.execute(
            update(Chunk)
            .where(Chunk.id.in_(ids[start : start + _IN_LIST_SIZE]), Chunk.lease_owner == REQUEUE_OWNER_PREFIX + reaper)
            .values(lease_until=None)
        )


@dataclass(frozen=True)
class LeaseRecord:
    """A chunk whose lease ran out, as ``dfscan status`` shows it."""

    seq: int
    status: str
    lease_owner: str | None
    lease_until: datetime | None
    expired: bool  # queued, its lease ran out, and no reaper has re-enqueued it yet
    lease_expired_at: datetime | None
    requeued_at: datetime | None
    requeues: int


def lease_records(session: Session, scan_id: int, *, now: datetime | None = None) -> list[LeaseRecord]:
    """Chunks of the scan that were re-enqueued after their lease expired, or whose lease has expired now."""
    now = now or utcnow()
    rows = session.execute(
        select(Chunk.seq, Chunk.status, Chunk.lease_owner, Chunk.lease_until, Chunk.lease_expired_at,
               Chunk.requeued_at, Chunk.requeues)
        .where(
            Chunk.scan_id == scan_id,
            or_(Chunk.requeues > 0, (Chunk.status == "queued") & (Chunk.lease_until < now)),
        )
        .order_by(Chunk.seq)
    ).all()
    return [
        LeaseRecord(r.seq, r.status, r.lease_owner, r.lease_until,
                    r.status == "queued" and r.lease_until is not None and r.lease_until < now,
                    r.lease_expired_at, r.requeued_at, r.requeues)
        for r in rows
    ]


# --- the producer's side -------------------------------------------------------------


def mark_walk_done(session: Session, scan_id: int, *, n_chunks: int, skipped: int) -> None:
    """Record that every chunk of the scan is in the database: from now on it can complete."""
    result = session.execute(
        update(Scan).where(Scan.id == scan_id).values(walk_done=True, n_chunks=n_chunks, skipped=skipped)
    )
    if result.rowcount == 0:
        raise ScanNotFound(scan_id)


def recorded_chunks(session: Session, scan_id: int) -> int:
    """How many chunks the scan has (its seqs are 0..n-1)."""
    return session.execute(select(func.count()).select_from(Chunk).where(Chunk.scan_id == scan_id)).scalar_one()


def chunk_paths(session: Session, scan_id: int, seq: int) -> list[str] | None:
    return session.execute(select(Chunk.paths).where(Chunk.scan_id == scan_id, Chunk.seq == seq)).scalar_one_or_none()


def maybe_complete_scan(session: Session, scan_id: int) -> bool:
    """Mark a running scan ``completed`` once its walk is done and every chunk is finished.

    Run in its own transaction after a chunk's commit: the scan row is locked
    first, so of two workers finishing the last two chunks at once, the second
    sees both.  Returns True if this call completed the scan.

    While the scan has a queued chunk (most calls: every chunk's end asks), one
    unlocked look at the (scan_id, status) index answers, without taking the
    scan's lock or counting its chunks.  It can't answer "no" wrongly: whoever
    commits the last chunk asks after its commit, and sees no queued chunk.
    """
    if _still_queued(session, scan_id):
        return False
    stmt = select(Scan.status, Scan.walk_done, Scan.n_chunks).where(Scan.id == scan_id)
    if dialect_name(session) == "postgresql":
        stmt = stmt.with_for_update()
    row = session.execute(stmt).one_or_none()
    if row is None:
        raise ScanNotFound(scan_id)
    if row.status != "running" or not row.walk_done:
        return False
    counts = dict(
        session.execute(
            select(Chunk.status, func.count()).where(Chunk.scan_id == scan_id).group_by(Chunk.status)
        ).all()
    )
    finished = sum(counts.get(s, 0) for s in FINISHED)
    if finished != sum(counts.values()) or finished < (row.n_chunks or 0):
        return False
    finish_scan(session, scan_id=scan_id, status="completed")
    return True


_STILL_QUEUED = select(
    _SCANS.c.status, _SCANS.c.walk_done,
    select(_CHUNKS.c.id).where(_CHUNKS.c.scan_id == bindparam("scan_id"), _CHUNKS.c.status == "queued")
    .exists().label("queued"),
).where(_SCANS.c.id == bindparam("scan_id"))


def _still_queued(session: Session, scan_id: int) -> bool:
    """The scan is running and has a queued chunk (or has not finished its walk): it can't complete yet."""
    row = session.execute(_STILL_QUEUED, {"scan_id": scan_id}).one_or_none()
    return row is not None and row.status == "running" and (row.queued or not row.walk_done)


def cancel_scan(session: Session, scan_id: int) -> bool:
    """End a running scan as ``cancelled``; workers then drop its chunks unscored."""
    status = session.execute(select(Scan.status).where(Scan.id == scan_id)).scalar_one_or_none()
    if status is None:
        raise ScanNotFound(scan_id)
    if status != "running":
        return False
    finish_scan(session, scan_id=scan_id, status="cancelled")
    return True


def unfinished_chunks(session: Session, scan_id: int, *, after_seq: int = -1, limit: int = 100) -> list[tuple[int, int, list[str]]]:
    """``(chunk_id, seq, paths)`` of queued chunks after ``after_seq``, in seq order: one page."""
    return [
        (r.id, r.seq, list(r.paths))
        for r in session.execute(
            select(Chunk.id, Chunk.seq, Chunk.paths)
            .where(Chunk.scan_id == scan_id, Chunk.status == "queued", Chunk.seq > after_seq)
            .order_by(Chunk.seq)
            .limit(limit)
        )
    ]


def finished_among(session: Session, chunk_ids: Iterable[int]) -> set[int]:
    ids = list(chunk_ids)
    out: set[int] = set()
    for start in range(0, len(ids), _IN_LIST_SIZE):
        out.update(
            session.execute(
                select(Chunk.id).where(Chunk.id.in_(ids[start : start + _IN_LIST_SIZE]), Chunk.status.in_(FINISHED))
            ).scalars()
        )
    return out


def unchanged_paths(session: Session, *, model_id: int, scan_id: int,
                    stats: dict[str, tuple[int, float, str | None]]) -> set[str]:
    """Paths unchanged since an ``ok`` (or ``no-face``: a finished outcome) row of the same model in another scan.

    ``stats`` gives each path's (size, mtime, etag); etag is an ``s3://``
    object's ETag, None for a local file.  Where both it and the row have an
    etag, size and etag must match (an object rewritten within LastModified's
    second has a new ETag); otherwise, size and mtime (files, and rows written
    before migration 0012).

    Served by the ``(model_id, path)`` index of ``results``: one IN-list
    lookup per chunk of paths.
    """
    out: set[str] = set()
    paths = list(stats)
    for start in range(0, len(paths), _IN_LIST_SIZE):
        part = paths[start : start + _IN_LIST_SIZE]
        for path, size, mtime, etag in session.execute(
            select(Result.path, Result.size, Result.mtime, Result.etag).where(
                Result.model_id == model_id,
                Result.path.in_(part),
                Result.status.in_(("ok", "no-face")),
                Result.scan_id != scan_id,
            )
        ):
            now_size, now_mtime, now_etag = stats[path]
            same = etag == now_etag if etag is not None and now_etag is not None else mtime == now_mtime
            if size == now_size and same:
                out.add(path)
    return out
