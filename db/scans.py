"""The life of a scan: its model, its chunks, its end and its summary.

None of these functions commits: the caller owns the transaction, so that a
batch of results and the chunk update that accounts for it commit together.
Functions that create rows flush to learn their ids.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, case, func, select, update
from sqlalchemy.orm import Session

from ._dialects import insert_for
from ._types import utcnow
from .errors import ChunkNotFound, DatabaseError, ScanNotFound
from .models import Chunk, Model, Result, Scan, ScanWorker
from .records import SCAN_END_STATUSES, ScanSummary

__all__ = [
    "add_chunk",
    "create_scan",
    "finish_chunk",
    "finish_scan",
    "get_or_create_model",
    "latest_scan_id",
    "scan_summary",
]


def get_or_create_model(
    session: Session, *, sha256: str, name: str, path: str, info: dict[str, Any]
) -> int:
    """Id of the model with this SHA-256, registering it first if new.

    Safe when several workers register the same model at once (insert-or-ignore).
    An existing row keeps its first name, path and info: the hash is the identity.
    """
    stmt = insert_for(session)(Model).values(
        sha256=sha256, name=name, path=path, info=info, created_at=utcnow()
    )
    session.execute(stmt.on_conflict_do_nothing(index_elements=["sha256"]))
    return session.execute(select(Model.id).where(Model.sha256 == sha256)).scalar_one()


def record_worker(session: Session, *, scan_id: int, host: str, pid: int, info: dict[str, Any]) -> None:
    """Note that process ``host``/``pid`` scores chunks of ``scan_id`` with the runtime in ``info``.

    ``info`` is :meth:`workers.context.ScanContext.runtime_record`; insert-or-ignore,
    so calling it for every chunk is harmless.
    """
    stmt = insert_for(session)(ScanWorker).values(
        scan_id=scan_id,
        host=host[:255],
        pid=pid,
        runtime=str(info.get("runtime")),
        runtime_version=_short(info.get("runtime_version")),
        precision=_short(info.get("precision")),
        device=_short(info.get("device")),
        decoder=str(info.get("decoder")),
        decoder_version=_short(info.get("decoder_version")),
        info=info,
        started_at=utcnow(),
    )
    session.execute(stmt.on_conflict_do_nothing(index_elements=["scan_id", "host", "pid"]))


def _short(value: Any) -> str | None:
    return None if value is None else str(value)[:64]


def create_scan(
    session: Session,
    *,
    name: str,
    roots: list[str],
    model_id: int,
    threshold: float,
    settings: dict[str, Any],
) -> int:
    """Start a scan (status "running"); ``settings`` is its JSON audit record."""
    scan = Scan(
        name=name,
        roots=list(roots),
        model_id=model_id,
        status="running",
        threshold=threshold,
        settings=settings,
        started_at=utcnow(),
    )
    session.add(scan)
    session.flush()
    return scan.id


def add_chunk(session: Session, *, scan_id: int, seq: int, paths: list[str]) -> int:
    """Queue chunk ``seq`` of a scan and return its id.

    Idempotent, so that a walker that restarts can re-add what it already
    added; re-adding a seq with different paths is an error.
    """
    stmt = insert_for(session)(Chunk).values(
        scan_id=scan_id,
        seq=seq,
        paths=list(paths),
        n_paths=len(paths),
        status="queued",
        attempts=0,
        created_at=utcnow(),
    )
    inserted = session.execute(
        stmt.on_conflict_do_nothing(index_elements=["scan_id", "seq"]).returning(Chunk.id)
    ).scalar_one_or_none()
    if inserted is not None:
        return inserted
    # Already there (a walk replayed): it must hold the same paths.
    chunk_id, stored = session.execute(
        select(Chunk.id, Chunk.paths).where(Chunk.scan_id == scan_id, Chunk.seq == seq)
    ).one()
    if stored != list(paths):
        raise DatabaseError(f"chunk {seq} of scan {scan_id} already exists with other paths")
    return chunk_id


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


def finish_scan(session: Session, *, scan_id: int, status: str) -> None:
    """End a scan and store the totals of its chunks in its count columns."""
    if status not in SCAN_END_STATUSES:
        raise ValueError(f"scan status {status!r} not in {SCAN_END_STATUSES}")
    totals = session.execute(
        select(
            func.coalesce(func.sum(Chunk.n_paths), 0),
            func.coalesce(func.sum(Chunk.ok), 0),
            func.coalesce(func.sum(Chunk.real), 0),
            func.coalesce(func.sum(Chunk.fake), 0),
            func.coalesce(func.sum(Chunk.errors), 0),
        ).where(Chunk.scan_id == scan_id)
    ).one()
    result = session.execute(
        update(Scan)
        .where(Scan.id == scan_id)
        .values(
            status=status,
            finished_at=utcnow(),
            total=totals[0],
            ok=totals[1],
            real=totals[2],
            fake=totals[3],
            errors=totals[4],
        )
    )
    if result.rowcount == 0:
        raise ScanNotFound(scan_id)


def latest_scan_id(session: Session) -> int | None:
    """Id of the most recently created scan, or None when there is none."""
    return session.execute(select(func.max(Scan.id))).scalar_one()


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    # COUNT ignores NULLs: portable where FILTER (WHERE ...) is not.
    return func.count(case((condition, 1)))


def scan_summary(session: Session, scan_id: int) -> ScanSummary:
    """Counts of a scan from its result rows (the truth) and its chunks, not from the counters."""
    head = session.execute(
        select(Scan.name, Scan.status, Scan.started_at, Scan.finished_at, Scan.walk_done, Scan.skipped, Model.sha256)
        .join(Model, Model.id == Scan.model_id)
        .where(Scan.id == scan_id)
    ).one_or_none()
    if head is None:
        raise ScanNotFound(scan_id)

    total, ok, real, fake, errors, no_face, computed, copied, reused = session.execute(
        select(
            func.count(),
            _count_if(Result.status == "ok"),
            _count_if(and_(Result.status == "ok", Result.label == "real")),
            _count_if(and_(Result.status == "ok", Result.label == "fake")),
            _count_if(Result.status == "error"),
            _count_if(Result.status == "no-face"),
            _count_if(Result.verdict_source == "computed"),
            _count_if(Result.verdict_source == "copy"),
            _count_if(Result.verdict_source == "reused"),
        ).where(Result.scan_id == scan_id)
    ).one()
    reason = func.coalesce(Result.error_code, "unknown")
    errors_by_reason = {
        code: n
        for code, n in session.execute(
            select(reason, func.count())
            .where(Result.scan_id == scan_id, Result.status == "error")
            .group_by(reason)
            .order_by(reason)
        )
    }
    chunks = {
        status: (n, paths)
        for status, n, paths in session.execute(
            select(Chunk.status, func.count(), func.coalesce(func.sum(Chunk.n_paths), 0))
            .where(Chunk.scan_id == scan_id)
            .group_by(Chunk.status)
        )
    }
    images_total = sum(p for _, p in chunks.values())
    elapsed = max(0.0, ((head.finished_at or utcnow()) - head.started_at).total_seconds())
    rate = total / elapsed if elapsed > 0 else 0.0
    running = head.status == "running"
    eta = max(0, images_total - total) / rate if (running and head.walk_done and rate > 0) else None
    return ScanSummary(
        scan_id=scan_id,
        name=head.name,
        status=head.status,
        model_sha256=head.sha256,
        total=total,
        ok=ok,
        real=real,
        fake=fake,
        errors=errors,
        errors_by_reason=errors_by_reason,
        skipped=head.skipped,
        walk_done=head.walk_done,
        chunks_total=sum(n for n, _ in chunks.values()),
        chunks_queued=chunks.get("queued", (0, 0))[0],
        chunks_done=chunks.get("done", (0, 0))[0],
        chunks_failed=chunks.get("failed", (0, 0))[0],
        images_total=images_total,
        started_at=head.started_at,
        finished_at=head.finished_at,
        elapsed_s=elapsed,
        images_per_s=rate,
        eta_s=eta,
        no_face=no_face,
        computed=computed,
        copied=copied,
        reused=reused,
    )
