"""A scan's chunks: queueing them, counting their deliveries, finishing them, ending the lost ones, paging them.

The database is the source of truth of a distributed scan: the broker only
carries messages, and may lose them (a Redis restart without persistence).
What ``dfscan resume``, ``status`` and the workers need to know about the
chunks of a scan is answered here; who scores a chunk right now is in
:mod:`dfscan.db.leases`.  Like :mod:`dfscan.db.scans`, nothing here commits:
the caller owns the transaction, so that a batch of results and the chunk
update that accounts for it commit together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from ._dialects import dialect_name, insert_for
from ._types import utcnow
from .errors import ChunkNotFound, DatabaseError
from .models import Chunk, Result, Scan
from .paths import path_hash
from .records import FINISHED, ResultRow
from .results import existing_paths, write_batch
from .scans import ScanHead

__all__ = [
    "ChunkStart",
    "add_chunk",
    "add_chunks",
    "chunk_paths",
    "close_lost_chunk",
    "finish_chunk",
    "finished_among",
    "recorded_chunks",
    "start_attempt",
    "unfinished_chunks",
]

_IN_LIST_SIZE = 500


# --- queueing and finishing --------------------------------------------------------


def add_chunk(session: Session, *, scan_id: int, seq: int, paths: list[str]) -> int:
    """Queue chunk ``seq`` of a scan and return its id.

    Idempotent, so that a walker that restarts can re-add what it already
    added; re-adding a seq with different paths is an error.
    """
    (chunk_id,) = add_chunks(session, scan_id=scan_id, first_seq=seq, batches=[paths])
    return chunk_id


def add_chunks(session: Session, *, scan_id: int, first_seq: int, batches: Sequence[Sequence[str]]) -> list[int]:
    """Queue consecutive chunks ``first_seq, first_seq + 1, ...`` of a scan; return their ids, in order.

    One statement for the group (SQLAlchemy's "insertmanyvalues": one multi-row
    ``INSERT ... RETURNING`` compiled once), so the producer commits a group of
    chunks at once instead of one commit per chunk.  Idempotent like
    :func:`add_chunk`: a seq already there keeps its row and must hold the same
    paths.
    """
    if not batches:
        return []
    now = utcnow()
    params = [{"scan_id": scan_id, "seq": first_seq + i, "paths": list(paths), "n_paths": len(paths),
               "created_at": now} for i, paths in enumerate(batches)]
    ids = {row.seq: row.id for row in session.execute(_add_chunks_statement(session), params)}
    out = []
    for i, paths in enumerate(batches):
        seq = first_seq + i
        chunk_id = ids.get(seq)
        if chunk_id is None:
            # Already there (a walk replayed): it must hold the same paths.
            chunk_id, stored = session.execute(
                select(Chunk.id, Chunk.paths).where(Chunk.scan_id == scan_id, Chunk.seq == seq)
            ).one()
            if stored != list(paths):
                raise DatabaseError(f"chunk {seq} of scan {scan_id} already exists with other paths")
        out.append(chunk_id)
    return out


_ADD_CHUNKS: dict[str, Any] = {}  # per dialect, built once


def _add_chunks_statement(session: Session) -> Any:
    name = dialect_name(session)
    stmt = _ADD_CHUNKS.get(name)
    if stmt is None:
        table = Chunk.__table__
        stmt = _ADD_CHUNKS[name] = (
            insert_for(session)(table)
            .values(status="queued", attempts=0)
            .on_conflict_do_nothing(index_elements=["scan_id", "seq"])
            .returning(table.c.id, table.c.seq)
        )
    return stmt


def finish_chunk(
    session: Session, *, chunk_id: int, ok: int, fake: int, real: int, errors: int
) -> None:
    """Mark a chunk done and end its lease. Counts are set, not added, so a redelivered chunk can finish twice.

    The lease's owner stays, as who last held it; a finished chunk needs no lease (the
    reaper looks at queued chunks only), so this is the lease's release too.
    """
    result = session.execute(_FINISH_CHUNK, {"chunk_id": chunk_id, "n_ok": ok, "n_fake": fake, "n_real": real,
                                             "n_errors": errors, "at": utcnow()})
    if result.rowcount == 0:
        raise ChunkNotFound(chunk_id)


# Built once: it runs at the end of every chunk.
_CHUNKS = Chunk.__table__
_FINISH_CHUNK = (
    update(_CHUNKS)
    .where(_CHUNKS.c.id == bindparam("chunk_id"))
    .values(status="done", ok=bindparam("n_ok"), fake=bindparam("n_fake"), real=bindparam("n_real"),
            errors=bindparam("n_errors"), last_error=None, finished_at=bindparam("at", type_=_CHUNKS.c.finished_at.type),
            lease_until=None)
)


# --- deliveries, and the chunks that kept failing ------------------------------------


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
    unique = list(dict.fromkeys(path_hash(p) for p in paths))
    for start in range(0, len(unique), _IN_LIST_SIZE):
        for status, label in session.execute(
            select(Result.status, Result.label).where(
                Result.scan_id == scan_id, Result.path_hash.in_(unique[start : start + _IN_LIST_SIZE])
            )
        ):
            if status == "ok":
                ok += 1
                real += label == "real"
                fake += label == "fake"
            else:
                errors += 1
    return ok, real, fake, errors


# --- what is recorded, and what is left ------------------------------------------------


def recorded_chunks(session: Session, scan_id: int) -> int:
    """How many chunks the scan has (its seqs are 0..n-1)."""
    return session.execute(select(func.count()).select_from(Chunk).where(Chunk.scan_id == scan_id)).scalar_one()


def chunk_paths(session: Session, scan_id: int, seq: int) -> list[str] | None:
    return session.execute(select(Chunk.paths).where(Chunk.scan_id == scan_id, Chunk.seq == seq)).scalar_one_or_none()


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
