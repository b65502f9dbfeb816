"""Leases: the chunk a worker is scoring, and the reaper of chunks whose worker vanished.

A delivery of a chunk claims it (:func:`claim_chunk`): it counts the delivery
and takes the chunk's lease, unless a live holder has it.  The holder renews
the lease while it scores, and :func:`dfscan.db.chunks.finish_chunk` ends it.
A lease that runs out in a running scan is the reaper's to re-enqueue
(:func:`reap_expired_leases`); ``dfscan status`` shows those chunks
(:func:`lease_records`).  Nothing here commits: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import String, bindparam, or_, select, update
from sqlalchemy.orm import Session

from ._types import utcnow
from .chunks import ChunkStart
from .errors import ChunkNotFound
from .models import Chunk, Model, Scan
from .records import FINISHED
from .scans import ScanHead

__all__ = [
    "REQUEUE_OWNER_PREFIX",
    "LeaseRecord",
    "ReapedChunk",
    "claim_chunk",
    "clear_requeue_leases",
    "lease_records",
    "reap_expired_leases",
    "release_lease",
    "renew_lease",
]

# The lease owner a reaper writes while it re-enqueues a chunk; a worker may always take it over.
REQUEUE_OWNER_PREFIX = "requeue:"
_IN_LIST_SIZE = 500


# --- a worker's lease ----------------------------------------------------------------

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


# --- the reaper ------------------------------------------------------------------------


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


# --- what `dfscan status` shows ----------------------------------------------------------


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
