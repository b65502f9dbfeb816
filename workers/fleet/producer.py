"""The producer of a distributed scan: register it, walk, record chunks, enqueue them.

Every chunk is committed to the database before its message is published,
so the database always knows at least as much as the broker: whatever the
broker loses (a Redis restart without persistence), or the producer never got
to publish (it was killed), ``resume`` finds as a ``queued`` chunk without
results and publishes again.  The walk itself is resumable: it is
deterministic (sorted), so a resumed walk replays the chunks already recorded,
checks them, and goes on from the first one missing.

Back-pressure: at most ``settings.max_outstanding_chunks`` chunks published by
this producer are unfinished at any time, so Redis holds a bounded number of
messages and the producer's memory stays flat whatever the archive's size.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from dfscan import db
from dfscan.db.leases import LeaseRecord, lease_records
from dfscan.core.settings import Settings
from dfscan.scanner.chunks import Chunk, chunked
from dfscan.scanner.errors import ScannerError
from dfscan.scanner.incremental import IncrementalFilter
from dfscan.scanner.sources import ScanSource
from dfscan.workers.fleet.lease import Reaper, describe
from dfscan.workers.scoring.registration import register_scan

__all__ = ["ProduceReport", "Producer", "ProducerError"]

log = logging.getLogger(__name__)

# The most chunks recorded in one transaction (and then published), and the longest a walked chunk waits
# for the rest of its group when the walk is slow (_Group).
RECORD_GROUP = 16
RECORD_WAIT_S = 0.5
PUBLISH_RETRY = {"max_retries": 30, "interval_start": 0.5, "interval_step": 1.0, "interval_max": 5.0}


class ProducerError(ScannerError):
    """A scan can't be produced or resumed as asked."""


@dataclass(frozen=True)
class ProduceReport:
    scan_id: int
    chunks_published: int
    chunks_total: int | None  # None while the walk is unfinished (stopped or cancelled)
    images_recorded: int
    skipped: int
    stopped: bool


class Producer:
    """Registers, walks and enqueues scans for one broker and one database.

    ``publish(chunk)`` sends one chunk message; by default it is a Celery
    ``send_task`` on ``app``.
    """

    def __init__(self, settings: Settings, app: Any | None = None, *, poll_s: float = 0.2) -> None:
        self.settings = settings
        self._app = app
        self.poll_s = poll_s
        self.engine: Engine = db.make_engine(settings.db_url)
        self.sessions: sessionmaker[Session] = db.session_factory(self.engine)
        self.warnings: list[str] = []
        self._reaper: Reaper | None = None
        # Seconds spent per stage of producing, summed over this producer's walks: "walk" (reading the roots
        # or path lists and making chunks), "record" (committing chunks), "publish" (to the broker), "wait"
        # (back-pressure: waiting for workers to finish chunks).  For benchmarks and logs.
        self.timings: dict[str, float] = dict.fromkeys(("walk", "record", "publish", "wait"), 0.0)

    # --- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def app(self) -> Any:
        if self._app is None:
            from dfscan.workers.fleet.app import create_app

            self._app = create_app(self.settings)
        return self._app

    def _retry(self, work: Callable, what: str) -> Any:
        return db.retry_db(work, deadline_s=self.settings.db_retry_seconds, what=what)

    def publish(self, chunk: Chunk) -> None:
        from dfscan.workers.fleet.app import SCORE_TASK

        self.app.send_task(
            SCORE_TASK,
            kwargs=chunk.to_message(),
            queue=self.settings.queue,
            retry=True,
            retry_policy=PUBLISH_RETRY,
        )

    # --- registering ----------------------------------------------------------------

    def register(self, source: ScanSource, *, name: str | None = None, incremental: bool = False) -> int:
        """Create the scan row (status ``running``) and return its id.  Loads no runtime."""
        from dfscan.core.settings import SettingsError
        from dfscan.trt.model_info import inspect_model

        if self.settings.model is None:
            raise SettingsError("no model given: pass --model PATH or set DFSCAN_MODEL")
        if "-" in source.path_lists:
            raise ProducerError("a distributed scan can't read paths from stdin ('-'): resume could not read them again")
        info = inspect_model(self.settings.model)
        self._retry(lambda: db.upgrade(self.engine), "migrating the database")

        def work() -> int:
            with self.sessions.begin() as session:
                return register_scan(session, self.settings, info, source, name=name, mode="distributed",
                                     incremental=incremental).scan_id

        return self._retry(work, "registering the scan")

    # --- producing ------------------------------------------------------------------

    def produce(self, scan_id: int, *, stop: threading.Event | None = None) -> ProduceReport:
        """Walk the scan's roots, record and publish its chunks; resumes a walk left unfinished.

        Returns when every chunk is published (not scored), or early if
        ``stop`` is set or the scan was cancelled.
        """
        with self.sessions() as session:
            head = db.scan_head(session, scan_id)
            audit = db.scan_audit(session, scan_id)
            recorded = db.recorded_chunks(session, scan_id)
        if head.status != "running":
            raise ProducerError(f"scan {scan_id} is {head.status}")
        if audit.get("mode") != "distributed" or "walk" not in audit:
            raise ProducerError(f"scan {scan_id} was not made by the distributed producer")
        if head.walk_done:
            return ProduceReport(scan_id, 0, head.n_chunks or 0, 0, head.skipped, False)

        source = ScanSource.from_record(audit["walk"])
        # The scan's own chunk size, not this process's: a resumed walk must replay the same chunks.
        chunk_size = int(audit.get("chunk_size") or self.settings.chunk_size)
        paths: Iterable[str] = source.paths(on_skip=lambda p, why: self.warnings.append(f"{p}: {why}; not scanned"))
        incremental = None
        if audit.get("incremental"):
            incremental = IncrementalFilter(
                self.sessions, model_id=head.model_id, scan_id=scan_id, batch=chunk_size,
                retry=self._retry,
            )
            paths = incremental(paths)
        window = _Window(self, scan_id, self.settings.max_outstanding_chunks, stop)
        images = n_chunks = walked = 0  # walked: paths walked but dropped unrecorded (stopped)
        timings = self.timings
        clock = time.perf_counter
        # Every chunk is recorded on one connection, checked out once: a checkout per chunk cost a
        # liveness ping (a round trip) per chunk.  A connection lost meanwhile is replaced on its next
        # use, inside the same retries.
        connection = self._retry(self.engine.connect, "connecting to the database")
        group = _Group(self, scan_id, window, sessionmaker(bind=connection, expire_on_commit=False))
        mark = clock()
        try:
            for seq, batch in enumerate(chunked(paths, chunk_size)):
                now = clock()
                timings["walk"] += now - mark
                n_chunks = seq + 1
                images += len(batch)
                if seq < recorded:
                    self._check_replayed(scan_id, seq, batch)
                    mark = clock()
                    timings["record"] += mark - now
                    continue
                if stop is not None and stop.is_set():
                    walked += group.drop()  # walked, not recorded: a resumed walk replays them
                if not group.batches:
                    if not window.wait_for_room():
                        return ProduceReport(scan_id, group.published, None, images - len(batch) - walked,
                                             incremental.skipped if incremental else 0, True)
                    group.open(seq)
                    timings["wait"] += group.since - now
                group.add(batch)
                mark = clock()
            group.send()
        finally:
            connection.close()
        published = group.published
        skipped = incremental.skipped if incremental else 0

        def finish() -> None:
            with self.sessions.begin() as session:
                db.mark_walk_done(session, scan_id, n_chunks=n_chunks, skipped=skipped)
            with self.sessions.begin() as session:
                db.maybe_complete_scan(session, scan_id)

        self._retry(finish, "ending the walk")
        return ProduceReport(scan_id, published, n_chunks, images, skipped, False)

    def _check_replayed(self, scan_id: int, seq: int, batch: list[str]) -> None:
        with self.sessions() as session:
            stored = db.chunk_paths(session, scan_id, seq)
        if stored != batch:
            raise ProducerError(
                f"scan {scan_id}: chunk {seq} no longer matches the files under its roots (the archive changed "
                "since the walk began); cancel it and start a new scan, with --incremental to skip what was scored"
            )

    # --- resuming -------------------------------------------------------------------

    def resume(self, scan_id: int, *, stop: threading.Event | None = None) -> ProduceReport:
        """Publish again every recorded chunk that is unfinished, then finish the walk if it was cut short."""
        with self.sessions() as session:
            head = db.scan_head(session, scan_id)
        if head.status != "running":
            raise ProducerError(f"scan {scan_id} is {head.status}; only a running scan can be resumed")
        window = _Window(self, scan_id, self.settings.max_outstanding_chunks, stop)
        republished = 0
        after = -1
        while True:
            def page(after: int = after) -> list[tuple[int, int, list[str]]]:
                with self.sessions() as session:
                    return db.unfinished_chunks(session, scan_id, after_seq=after, limit=100)

            rows = self._retry(page, "listing unfinished chunks")
            if not rows:
                break
            for chunk_id, seq, paths in rows:
                if not window.wait_for_room():
                    return ProduceReport(scan_id, republished, None, 0, 0, True)
                self.publish(Chunk(scan_id, seq, tuple(paths), chunk_id))
                window.add(chunk_id)
                republished += 1
                after = seq
        report = self.produce(scan_id, stop=stop)

        def complete() -> None:
            with self.sessions.begin() as session:
                db.maybe_complete_scan(session, scan_id)

        self._retry(complete, "completing the scan")
        return ProduceReport(
            scan_id, republished + report.chunks_published, report.chunks_total, report.images_recorded,
            report.skipped, report.stopped,
        )

    # --- following ------------------------------------------------------------------

    def progress(self, scan_id: int) -> db.ScanSummary:
        def read() -> db.ScanSummary:
            with self.sessions() as session:
                return db.scan_summary(session, scan_id)

        return self._retry(read, "reading progress")

    def lease_records(self, scan_id: int) -> list[LeaseRecord]:
        """Chunks of the scan whose lease expired, and when they were re-enqueued."""
        def read() -> list[LeaseRecord]:
            with self.sessions() as session:
                return lease_records(session, scan_id)

        return self._retry(read, "reading leases")

    def cancel(self, scan_id: int) -> bool:
        """End a running scan as ``cancelled``; False if it had already ended."""
        def work() -> bool:
            with self.sessions.begin() as session:
                return db.cancel_scan(session, scan_id)

        return self._retry(work, "cancelling the scan")

    def reaper(self) -> Reaper:
        """This producer's reaper of chunks whose lease ran out (their worker's host died)."""
        if self._reaper is None:
            self._reaper = Reaper(self.sessions, self.publish, lease_s=self.settings.lease_seconds,
                                  interval_s=self.settings.lease_renew_seconds)
        return self._reaper

    def wait(self, scan_id: int, *, on_progress: Callable[[db.ScanSummary], None] | None = None,
             poll_s: float = 1.0, stop: threading.Event | None = None) -> db.ScanSummary:
        """Poll the scan's progress until it is no longer running (or ``stop`` is set).

        While it waits, the producer is one of the reapers: with a broker, it
        re-enqueues chunks whose lease ran out.
        """
        last_reap = time.monotonic()
        while True:
            current = self.progress(scan_id)
            if on_progress is not None:
                on_progress(current)
            if current.status != "running" or (stop is not None and stop.is_set()):
                return current
            if self.settings.broker_url and time.monotonic() - last_reap >= self.settings.lease_renew_seconds:
                last_reap = time.monotonic()
                try:
                    self.reaper().run_once()
                except Exception as exc:  # noqa: BLE001 - a worker's reaper, or the next pass, does it
                    log.warning("lease reaper: %s", describe(exc))
            time.sleep(poll_s)


class _Group:
    """Chunks walked but not recorded yet: recorded together, then published.

    One statement and one commit per group, where a commit per chunk cost a WAL
    flush per chunk; every chunk is still committed before its message is
    published.  A group is at most ``RECORD_GROUP`` chunks and what the window
    has room for, and a slow walk does not hold a walked chunk back longer than
    ``RECORD_WAIT_S`` (checked as the next chunk arrives).
    """

    def __init__(self, producer: Producer, scan_id: int, window: "_Window", sessions: sessionmaker[Session]) -> None:
        self.producer = producer
        self.scan_id = scan_id
        self.window = window
        self.sessions = sessions
        self.batches: list[list[str]] = []
        self.seq = self.size = self.published = 0
        self.since = 0.0

    def open(self, seq: int) -> None:
        """Start a group at chunk ``seq``, once the window has room."""
        self.seq, self.size, self.since = seq, min(RECORD_GROUP, self.window.room()), time.perf_counter()

    def add(self, batch: list[str]) -> None:
        self.batches.append(batch)
        if len(self.batches) >= self.size or time.perf_counter() - self.since >= RECORD_WAIT_S:
            self.send()

    def drop(self) -> int:
        """Forget the group (the producer stops); returns how many paths it held."""
        n = sum(len(b) for b in self.batches)
        self.batches = []
        return n

    def send(self) -> None:
        """Record the group's chunks in one transaction, then publish them."""
        if not self.batches:
            return
        producer, timings, clock = self.producer, self.producer.timings, time.perf_counter
        started = clock()
        ids = producer._retry(self._record, "recording chunks")
        recorded_at = clock()
        for offset, (batch, chunk_id) in enumerate(zip(self.batches, ids)):
            producer.publish(Chunk(self.scan_id, self.seq + offset, tuple(batch), chunk_id))
            self.window.add(chunk_id)
        self.published += len(self.batches)
        self.batches = []
        timings["record"] += recorded_at - started
        timings["publish"] += clock() - recorded_at

    def _record(self) -> list[int]:
        with self.sessions.begin() as session:
            return db.add_chunks(session, scan_id=self.scan_id, first_seq=self.seq, batches=self.batches)


class _Window:
    """The chunks this producer published that are not finished yet, at most ``limit``.

    Once full, it waits until a quarter of them (``refill``) have finished
    before it lets the next ones through: one look at the database per
    ``refill`` chunks rather than one per chunk, and the broker still holds
    three quarters of the window for the workers meanwhile.  Its memory is
    ``limit`` chunk ids whatever the scan's size.
    """

    def __init__(self, producer: Producer, scan_id: int, limit: int, stop: threading.Event | None) -> None:
        self.producer = producer
        self.scan_id = scan_id
        self.limit = limit
        self.refill = max(1, limit // 4)
        self.stop = stop
        self.ids: deque[int] = deque()
        self._room = limit  # chunks that may go out before the next look at the database

    def add(self, chunk_id: int) -> None:
        self.ids.append(chunk_id)
        self._room -= 1

    def room(self) -> int:
        """How many chunks may be published now (after :meth:`wait_for_room` said some may)."""
        return max(1, self.limit - len(self.ids))

    def wait_for_room(self) -> bool:
        """Block until fewer than ``limit`` chunks are outstanding; False if stopped or cancelled."""
        delay = self.producer.poll_s
        while True:
            if self.stop is not None and self.stop.is_set():
                return False
            if len(self.ids) < self.limit and (self._room > 0 or len(self.ids) <= self.limit - self.refill):
                return True

            def check() -> tuple[set[int], str]:
                with self.producer.sessions() as session:
                    return (
                        db.finished_among(session, self.ids),
                        db.scan_head(session, self.scan_id).status,
                    )

            finished, status = self.producer._retry(check, "checking outstanding chunks")
            if status != "running":
                return False
            if finished:
                self.ids = deque(i for i in self.ids if i not in finished)
                delay = self.producer.poll_s
                if len(self.ids) <= self.limit - self.refill:
                    self._room = self.limit - len(self.ids)
                    return True
            time.sleep(delay)
            if not finished:
                delay = min(delay * 1.5, 2.0)
