"""The life of a scan: its model and workers, its row, how workers look it up, its walk, its end and its summary.

None of these functions commits: the caller owns the transaction, so that a
batch of results and the chunk update that accounts for it commit together.
Functions that create rows flush to learn their ids.  A scan's chunks are in
:mod:`dfscan.db.chunks`, their leases in :mod:`dfscan.db.leases`.

The walk's state (whether it has finished, how many chunks it recorded, how
many files an incremental scan skipped) is in columns of ``scans``; the scan's
``settings`` document is its audit record and is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, case, func, select, update
from sqlalchemy.orm import Session

from ._dialects import dialect_name, insert_for
from ._partitions import create_partition
from ._types import utcnow
from .errors import ScanNotFound
from .folders import record_folders
from .models import Chunk, Model, Result, Scan, ScanWorker, scan_provenance
from .near_copies import record_near_copies
from .records import FINISHED, SCAN_END_STATUSES, ScanSummary
from .sources import record_sources

__all__ = [
    "ScanHead",
    "cancel_scan",
    "create_scan",
    "find_scan_by_name",
    "finish_scan",
    "get_or_create_model",
    "latest_scan_id",
    "mark_walk_done",
    "maybe_complete_scan",
    "record_worker",
    "scan_audit",
    "scan_head",
    "scan_summary",
]


# --- registering a model, a worker, a scan ----------------------------------------------


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

    ``info`` is :meth:`workers.scoring.context.ScanContext.runtime_record`; insert-or-ignore,
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
    """Start a scan (status "running"); ``settings`` is its JSON audit record.

    On PostgreSQL the scan's partition of ``results`` is made in the same transaction (:mod:`._partitions`).
    """
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
    create_partition(session, scan.id)
    return scan.id


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


def latest_scan_id(session: Session) -> int | None:
    """Id of the most recently created scan, or None when there is none."""
    return session.execute(select(func.max(Scan.id))).scalar_one()


# --- the walk, and the end of a scan ------------------------------------------------------


def mark_walk_done(session: Session, scan_id: int, *, n_chunks: int, skipped: int) -> None:
    """Record that every chunk of the scan is in the database: from now on it can complete."""
    result = session.execute(
        update(Scan).where(Scan.id == scan_id).values(walk_done=True, n_chunks=n_chunks, skipped=skipped)
    )
    if result.rowcount == 0:
        raise ScanNotFound(scan_id)


def finish_scan(session: Session, *, scan_id: int, status: str) -> None:
    """End a scan: the totals of its chunks in its count columns, its rows per verdict source in ``scan_sources``
    and per folder in ``scan_folders``, its near copies in ``scan_near_copies``."""
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
    record_sources(session, scan_id)
    record_folders(session, scan_id)
    record_near_copies(session, scan_id)


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


# Built once: every chunk's end asks.
_CHUNKS = Chunk.__table__
_SCANS = Scan.__table__
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


# --- a scan's summary -----------------------------------------------------------------------


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    # COUNT ignores NULLs: portable where FILTER (WHERE ...) is not.
    return func.count(case((condition, 1)))


def _manifest_counts(session: Session, scan_id: int) -> tuple[int, int]:
    """Files with a C2PA manifest (embedded, or pointed to remotely), and those whose manifest is invalid."""
    view = scan_provenance.c
    manifests, invalid = session.execute(
        select(_count_if(view.c2pa.in_(("embedded", "remote"))), _count_if(view.c2pa_state == "invalid"))
        .where(view.scan_id == scan_id)
    ).one()
    return manifests, invalid


def _errors_by_reason(session: Session, scan_id: int) -> dict[str, int]:
    reason = func.coalesce(Result.error_code, "unknown")
    return {
        code: n
        for code, n in session.execute(
            select(reason, func.count())
            .where(Result.scan_id == scan_id, Result.status == "error")
            .group_by(reason)
            .order_by(reason)
        )
    }


def scan_summary(session: Session, scan_id: int) -> ScanSummary:
    """Counts of a scan from its result rows (the truth) and its chunks, not from the counters."""
    head = session.execute(
        select(Scan.name, Scan.status, Scan.started_at, Scan.finished_at, Scan.walk_done, Scan.skipped, Model.sha256)
        .join(Model, Model.id == Scan.model_id)
        .where(Scan.id == scan_id)
    ).one_or_none()
    if head is None:
        raise ScanNotFound(scan_id)

    total, ok, real, fake, errors, no_face, computed, copied, reused, matched, matches, declared = session.execute(
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
            _count_if(Result.matches > 0),
            func.coalesce(func.sum(Result.matches), 0),
            _count_if(Result.synthetic_declared.is_(True)),
        ).where(Result.scan_id == scan_id)
    ).one()
    manifests, invalid_manifests = _manifest_counts(session, scan_id)
    errors_by_reason = _errors_by_reason(session, scan_id)
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
        matched=matched,
        matches=int(matches),
        manifests=manifests,
        invalid_manifests=invalid_manifests,
        declared_synthetic=declared,
    )

