"""Celery tasks: thin adapters over :func:`dfscan.workers.scoring.score_chunk`.

A task parses its JSON message, asks the database what to do with the chunk
(:func:`handle_chunk`, a plain function), and turns failures into a requeue.
The model, runtime and decoder are loaded lazily, once per worker process, on
the first chunk (:class:`WorkerState`), keyed by the scan's model: a worker
serves scans of any model it can find, one model loaded at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from celery.exceptions import Reject
from celery.signals import worker_process_shutdown, worker_ready, worker_shutdown

from dfscan import db
from dfscan.db.leases import claim_chunk
from dfscan.core.settings import Settings
from dfscan.scanner.chunks import Chunk
from dfscan.workers.fleet.lease import Heartbeat, Reaper, holder_alive, lease_owner

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from dfscan.workers.fleet.app import DfscanCelery
    from dfscan.workers.scoring.context import ScanContext

__all__ = ["ModelMismatch", "WorkerState", "handle_chunk", "register", "worker_state"]

log = logging.getLogger(__name__)

# What a chunk's delivery ended as; returned by the task for logs and tests.
SCORED, DUPLICATE, CANCELLED, LOST, LEASED = "scored", "duplicate", "cancelled", "worker-lost", "leased-elsewhere"


class ModelMismatch(Exception):
    """This worker has no model file with the SHA-256 the scan was registered with."""


class WorkerState:
    """One worker process's resources: a database engine, and a :class:`ScanContext` per model."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._ctx: ScanContext | None = None
        self._ctx_sha: str | None = None
        # Records each batch in the worker's Prometheus metrics, when they are served.
        self.on_batch = None
        self._noted_scans: set[int] = set()
        self._reuse: dict[int, bool] = {}
        self._roots: dict[int, tuple[str, ...] | None] = {}

    @property
    def engine(self) -> "Engine":
        if self._engine is None:
            self._engine = db.make_engine(self.settings.db_url)
            self._sessions = db.session_factory(self._engine)
        return self._engine

    @property
    def sessions(self) -> "sessionmaker[Session]":
        if self._sessions is None:
            self._sessions = db.session_factory(self.engine)
        return self._sessions

    @contextlib.contextmanager
    def one_connection(self) -> "Iterator[sessionmaker[Session]]":
        """Sessions whose transactions all run on one connection of the pool, checked out once."""
        from sqlalchemy.orm import sessionmaker

        connection = self.retry(self.engine.connect, "connecting to the database")
        try:
            yield sessionmaker(bind=connection, expire_on_commit=False)
        finally:
            connection.close()

    def retry(self, work, what: str):
        return db.retry_db(work, deadline_s=self.settings.db_retry_seconds, what=what)

    def context_for(self, head: db.ScanHead) -> "ScanContext":
        """The scoring context for the scan's model, with the scan's threshold."""
        from dfscan.workers.scoring.context import ScanContext

        if self._ctx is None or self._ctx_sha != head.model_sha256:
            self.close_context()
            model = self._find_model(head)
            ctx = ScanContext.open(self.settings.with_(model=model), migrate=False)
            if ctx.info.sha256 != head.model_sha256:
                ctx.close()
                raise ModelMismatch(f"{model} changed while loading (SHA-256 {ctx.info.sha256[:12]})")
            if self.settings.metrics_port is not None:
                from dfscan.workers.fleet.metrics import WorkerMetrics, batch_hook

                self.on_batch = batch_hook(WorkerMetrics())
            self._ctx, self._ctx_sha = ctx, head.model_sha256
            log.info("loaded model %s (%s) on %s", model, head.model_sha256[:12], ctx.runtime.name)
        ctx = self._ctx
        if ctx.verdict.threshold != head.threshold:
            ctx = dataclasses.replace(ctx, verdict=dataclasses.replace(ctx.verdict, threshold=head.threshold))
        reuse = self.reuse_verdicts(head.scan_id)
        if ctx.reuse_verdicts != reuse:
            ctx = dataclasses.replace(ctx, reuse_verdicts=reuse)
        return ctx

    def reuse_verdicts(self, scan_id: int) -> bool:
        """Whether the scan was started with --reuse-verdicts (its audit record; this worker's setting if it
        doesn't say); read once per scan."""
        self._read_audit(scan_id)
        return self._reuse[scan_id]

    def confinement(self, scan_id: int) -> tuple[str, ...] | None:
        """The real roots the scan's reads stay under (its walk followed no symbolic link; scanner.confine),
        from its audit record; None: not confined."""
        self._read_audit(scan_id)
        return self._roots[scan_id]

    def _read_audit(self, scan_id: int) -> None:
        if scan_id not in self._reuse:
            from dfscan.scanner.confine import roots_from_record

            def read() -> dict:
                with self.sessions() as session:
                    return db.scan_audit(session, scan_id)

            audit = self.retry(read, f"reading the audit record of scan {scan_id}")
            self._roots[scan_id] = roots_from_record(audit.get("walk"))
            self._reuse[scan_id] = bool(audit.get("reuse_verdicts", self.settings.reuse_verdicts))

    def note_worker(self, ctx: "ScanContext", scan_id: int) -> None:
        """Record in ``scan_workers`` that this process scores ``scan_id``, with which runtime; once."""
        if scan_id in self._noted_scans:
            return

        def work() -> None:
            with self.sessions.begin() as session:
                ctx.record_worker(session, scan_id)

        self.retry(work, f"recording this worker for scan {scan_id}")
        self._noted_scans.add(scan_id)

    def _find_model(self, head: db.ScanHead) -> Path:
        from dfscan.trt.model_info import sha256_file

        candidates = [p for p in (self.settings.model, Path(head.model_path)) if p is not None]
        for path in candidates:
            if path.is_file() and sha256_file(path) == head.model_sha256:
                return path
        raise ModelMismatch(
            f"scan {head.scan_id} needs model {head.model_sha256[:12]}; not found at "
            + ", ".join(os.fspath(p) for p in candidates)
        )

    def close_context(self) -> None:
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = self._ctx_sha = None

    def close(self) -> None:
        self.close_context()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = self._sessions = None


def handle_chunk(state: WorkerState, chunk: Chunk) -> str:
    """Score one delivered chunk, unless the database says not to; returns what happened.

    * the scan was cancelled: drop the chunk;
    * the chunk is already finished (a duplicate delivery, or a redelivery of
      a chunk whose commit landed before its acknowledgement): nothing to do;
    * a live worker holds the chunk's lease (a stale copy of a message that a
      reaper re-enqueued): drop it, uncounted; if that worker dies too, its
      lease runs out and the chunk is enqueued again;
    * the chunk has been delivered more than ``max_attempts`` times (it kills
      its worker): an ``error`` row with reason ``worker-lost`` for each path
      that has none, and the chunk ends ``failed``;
    * otherwise take its lease and score it, renewing the lease while scoring;
      the last batch's commit marks it ``done``.

    Every path ends with the scan's completion check, so the worker that
    finishes the last chunk completes the scan.

    The chunk's transactions (claim, rows with completion, the scan's check)
    share one pooled connection: one checkout and liveness ping per chunk, not
    one per transaction.  A connection lost meanwhile is replaced on its next
    use, inside the same retries.
    """
    assert chunk.chunk_id is not None
    with state.one_connection() as sessions:
        return _handle_chunk(state, sessions, chunk)


def _handle_chunk(state: WorkerState, sessions: "sessionmaker[Session]", chunk: Chunk) -> str:
    assert chunk.chunk_id is not None
    settings = state.settings
    max_attempts = settings.max_attempts
    owner = lease_owner()

    def start() -> tuple[db.ChunkStart, db.ScanHead]:
        with sessions.begin() as session:
            begun = claim_chunk(session, chunk.chunk_id, owner=owner, lease_s=settings.lease_seconds,
                                holder_alive=holder_alive)
            return begun, begun.head or db.scan_head(session, chunk.scan_id)

    timings: dict[str, float] = {}
    began = time.perf_counter()
    begun, head = state.retry(start, f"starting chunk {chunk.seq} of scan {chunk.scan_id}")
    timings["claim"] = time.perf_counter() - began
    if begun.scan_status == "cancelled":
        return CANCELLED
    if begun.leased_by is not None:
        log.info("chunk %d of scan %d is leased to %s; dropping this copy", chunk.seq, chunk.scan_id, begun.leased_by)
        return LEASED
    if begun.status in db.FINISHED:
        outcome = DUPLICATE
    elif begun.attempts > max_attempts:
        reason = f"the chunk was lost with its worker on {begun.attempts - 1} attempts"

        def close() -> int:
            with sessions.begin() as session:
                return db.close_lost_chunk(
                    session, chunk_id=chunk.chunk_id, scan_id=chunk.scan_id, model_id=head.model_id,
                    paths=chunk.paths, reason=reason,
                )

        n = state.retry(close, "closing a lost chunk")
        log.error("chunk %d of scan %d: %s; %d error rows", chunk.seq, chunk.scan_id, reason, n)
        outcome = LOST
    else:
        from dfscan.workers.scoring.loop import score_chunk

        # The heartbeat renews from its own thread, on a connection of its own.
        with Heartbeat(state.sessions, chunk.chunk_id, owner=owner, lease_s=settings.lease_seconds,
                       renew_s=settings.lease_renew_seconds) as beat:
            ctx = dataclasses.replace(state.context_for(head), sessions=sessions)
            state.note_worker(ctx, chunk.scan_id)
            result = score_chunk(ctx, chunk, head.model_id, on_batch=state.on_batch,
                                 roots=state.confinement(chunk.scan_id))
            beat.release = False  # the chunk's last commit ended its lease
        timings.update(result.timings)
        outcome = SCORED
    done = time.perf_counter()
    complete(state, chunk.scan_id, sessions)
    end = time.perf_counter()
    timings["complete"] = end - done
    log.info("chunk %d of scan %d: %s, %d paths in %.2f ms (%s)", chunk.seq, chunk.scan_id, outcome, len(chunk.paths),
             1000 * (end - began), ", ".join(f"{k} {1000 * v:.2f}" for k, v in timings.items()))
    return outcome


def complete(state: WorkerState, scan_id: int, sessions: "sessionmaker[Session] | None" = None) -> bool:
    sessions = sessions or state.sessions

    def work() -> bool:
        with sessions.begin() as session:
            return db.maybe_complete_scan(session, scan_id)

    done = state.retry(work, f"completing scan {scan_id}")
    if done:
        log.info("scan %d completed", scan_id)
    return done


_STATE_LOCK = threading.Lock()
_STATE: WorkerState | None = None
_STATE_PID: int | None = None


def worker_state(settings: Settings) -> WorkerState:
    """This process's :class:`WorkerState`, created on first use (after the pool forked)."""
    global _STATE, _STATE_PID
    with _STATE_LOCK:
        if _STATE is None or _STATE_PID != os.getpid():
            _STATE, _STATE_PID = WorkerState(settings), os.getpid()
        return _STATE


def register(app: "DfscanCelery") -> None:
    """Add the dfscan tasks to ``app``."""
    from dfscan.workers.fleet.app import RETENTION_TASK, SCHEDULED_SCAN_TASK, SCORE_TASK

    @app.task(name=SCORE_TASK, shared=False, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def score_chunk_task(self, scan_id: int, chunk_id: int, seq: int, paths: list[str]) -> str:
        chunk = Chunk.from_message({"scan_id": scan_id, "chunk_id": chunk_id, "seq": seq, "paths": paths})
        state = worker_state(self.app.settings)
        try:
            return handle_chunk(state, chunk)
        except Exception as exc:
            # Transient database trouble outlasted the retries, a model that is
            # missing here, or a bug: give the chunk back.  The attempt counter
            # ends a chunk that fails every time.
            log.exception("chunk %d of scan %d failed; giving it back", seq, scan_id)
            raise Reject(f"{type(exc).__name__}: {exc}", requeue=True) from exc

    @app.task(name=SCHEDULED_SCAN_TASK, shared=False, bind=True, acks_late=True, ignore_result=True)
    def scheduled_scan_task(self, entry: dict) -> int:
        from dfscan.workers.fleet.schedule import run_entry

        return run_entry(self.app.settings, entry, run_key=self.request.id)

    # A redelivered prune (its worker died) runs again: prune finishes what the first delivery began.
    @app.task(name=RETENTION_TASK, shared=False, bind=True, acks_late=True, ignore_result=True)
    def retention_task(self, older_than: str) -> dict:
        from dfscan.workers.fleet.schedule import run_retention

        return run_retention(self.app.settings, older_than)


_REAPER: Reaper | None = None


@worker_ready.connect(weak=False)
def _start_reaper(sender: object = None, **_: object) -> None:
    """Every dfscan worker re-enqueues chunks whose lease ran out: a thread of the Celery main process."""
    global _REAPER
    app = getattr(sender, "app", None)
    settings: Settings | None = getattr(app, "settings", None)
    if settings is None or _REAPER is not None or not settings.db_url:
        return
    from dfscan.workers.fleet.app import SCORE_TASK

    retry_policy = {"max_retries": 10, "interval_start": 0.5, "interval_step": 1.0, "interval_max": 5.0}

    def publish(chunk: Chunk) -> None:
        app.send_task(SCORE_TASK, kwargs=chunk.to_message(), queue=settings.queue, retry=True,
                      retry_policy=retry_policy)

    # The thread's own engine, made after the pool forked; pool processes forked later (to replace
    # one that died) drop its connections without closing them (SQLAlchemy's rule for fork).
    engine = db.make_engine(settings.db_url)
    os.register_at_fork(after_in_child=lambda: engine.dispose(close=False))
    _REAPER = Reaper(db.session_factory(engine), publish, lease_s=settings.lease_seconds,
                     interval_s=settings.lease_renew_seconds).start()
    log.info("lease reaper started: leases of %d s, checked every %.1f s", settings.lease_seconds,
             settings.lease_renew_seconds)


@worker_shutdown.connect(weak=False)
def _stop_reaper(**_: object) -> None:
    if _REAPER is not None:
        _REAPER.stop()


@worker_process_shutdown.connect(weak=False)
def _teardown(**_: object) -> None:
    """Free the runtime and the connections of a pool process that exits."""
    if _STATE is not None and _STATE_PID == os.getpid():
        _STATE.close()
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from dfscan.workers.fleet.metrics import mark_process_dead

        mark_process_dead(os.getpid(), directory)
