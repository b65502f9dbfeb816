"""Scans started through the API: checked against the allowed roots, queued, run a few at a time.

A scan is registered (its row, status ``running`` in the database) when it is
asked for, so the answer carries its id at once; it runs when one of the
``max_scans`` slots is free, and until then it is ``queued`` in this process
(:meth:`ScanService.state`), at most ``max_queued_scans`` of them (429 beyond).
Without a broker a scan runs as the embedded :class:`LocalScan` on the
server's own context: one model, runtime and decoder for every scan and every
upload.  With one, a :class:`Producer` walks it and enqueues its chunks for
the fleet.  Either way the scan is the same rows in the same tables as
`dfscan scan` writes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from dfscan import db
from dfscan.db.api_keys import set_scan_owner
from dfscan.db.callbacks import add_callback
from dfscan.scanner import ScanSource, WalkOptions, check_roots
from dfscan.scanner.errors import ScannerError
from dfscan.serve.errors import BadRequest, Forbidden, TooManyRequests
from dfscan.core.settings import Settings

if TYPE_CHECKING:
    from dfscan.workers.scoring.context import ScanContext

__all__ = ["ScanRequest", "ScanService", "check_allowed"]

_log = logging.getLogger(__name__)
T = TypeVar("T")

# Seconds a client refused for a full queue is told to wait: about the time a small scan takes.
RETRY_QUEUE_S = 30
# Scans registered at once (checking roots, writing rows): a burst of requests queues here, in a pool of its own,
# rather than taking every thread of the API's pool and the interpreter's lock from the event loop.
REGISTERING = 2


@dataclass(frozen=True)
class ScanRequest:
    roots: tuple[str, ...]
    name: str | None = None
    incremental: bool = False
    callback_url: str | None = None


def _inside(path: str, prefix: str) -> bool:
    return os.path.commonpath([path, prefix]) == prefix


def check_allowed(roots: tuple[str, ...], allowed: tuple[str, ...]) -> list[str]:
    """Absolute roots, each inside one of ``allowed`` once symbolic links and ``..`` are resolved."""
    if not roots:
        raise BadRequest("give at least one root (a file or directory on the server's storage)")
    if not allowed:
        raise Forbidden("this server allows no scan roots (set DFSCAN_SERVE_ROOTS or --roots)")
    prefixes = [os.path.realpath(p) for p in allowed]
    out = []
    for root in roots:
        if not isinstance(root, str) or not root or "\x00" in root:
            raise BadRequest(f"invalid root {root!r}")
        if not os.path.isabs(root):
            raise BadRequest(f"root {root!r} must be an absolute path")
        real = os.path.realpath(root)
        if not any(_inside(real, p) for p in prefixes):
            raise Forbidden(f"root {root!r} is outside the allowed prefixes")
        out.append(real)
    try:
        return check_roots(out)
    except ScannerError as exc:
        raise BadRequest(str(exc)) from None


@dataclass
class _Entry:
    """A registered scan waiting for a slot or running in one."""

    scan_id: int
    work: Callable[[threading.Event], object]  # scores (or produces) the scan until it ends or the event is set
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class ScanService:
    """The scans this process runs (``max_scans`` at once) and queues, so they can be watched and stopped."""

    def __init__(self, settings: Settings, ctx: "ScanContext") -> None:
        self.settings = settings
        self.ctx = ctx  # shared by every embedded scan; the caller made it safe to share (ScanContext.share)
        self.sessions: sessionmaker[Session] = ctx.sessions
        self._queue: deque[_Entry] = deque()
        self._running: dict[int, _Entry] = {}
        self._reserved = 0  # scans being registered: counted against the queue before they join it
        self._closed = False
        self._lock = threading.Lock()
        self._registering = ThreadPoolExecutor(max_workers=REGISTERING, thread_name_prefix="register")

    def active(self) -> set[int]:
        """Scans of this process that have not ended: running or queued."""
        with self._lock:
            return set(self._running) | {e.scan_id for e in self._queue}

    def state(self, scan_id: int) -> tuple[str, int | None] | None:
        """``("running", None)``, ``("queued", position)`` (1: next), or None: not a scan this process holds."""
        with self._lock:
            if scan_id in self._running:
                return "running", None
            for position, entry in enumerate(self._queue, start=1):
                if entry.scan_id == scan_id:
                    return "queued", position
        return None

    def overlay(self, scan_id: int, data: dict) -> dict:
        """``data`` (a scan's answer) with ``status: queued`` and its ``queue_position`` while it waits here."""
        held = self.state(scan_id)
        if held is not None and held[0] == "queued":
            data["status"], data["queue_position"] = held
        return data

    async def submit(self, request: ScanRequest, *, api_key_id: int) -> int:
        """:meth:`start` in the registering pool: the scan's id once its row is committed (it runs later)."""
        return await self.registering(lambda: self.start(request, api_key_id=api_key_id))

    async def registering(self, work: Callable[[], T]) -> T:
        """``work()`` (blocking: files, the database, DNS) in the registering pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._registering, work)

    def start(self, request: ScanRequest, *, api_key_id: int) -> int:
        roots = check_allowed(request.roots, self.settings.serve_roots)
        # Symbolic links are not followed: one could lead out of the allowed prefixes.
        source = ScanSource(tuple(roots), (), WalkOptions(extensions=self.settings.scan_extensions, follow_symlinks=False))
        self._reserve()
        try:
            if self.settings.broker_url:
                scan_id, work = self._register_fleet(source, request)
            else:
                scan_id, work = self._register_embedded(source, request)
        except BaseException:
            self._unreserve()
            raise
        try:
            with self.sessions.begin() as session:
                set_scan_owner(session, scan_id, api_key_id)  # only this key (and admin keys) see the scan
                if request.callback_url:
                    add_callback(session, scan_id=scan_id, api_key_id=api_key_id, url=request.callback_url)
        except BaseException:
            self._unreserve()
            self._end_unrun(scan_id, "failed")
            raise
        self._submit(_Entry(scan_id, work))
        return scan_id

    def _reserve(self) -> None:
        with self._lock:
            held = len(self._running) + len(self._queue) + self._reserved
            if held >= self.settings.max_scans + self.settings.max_queued_scans:
                raise TooManyRequests(f"{len(self._running)} scans are running and {len(self._queue)} are queued, "
                                      f"the most this server holds: try again later", RETRY_QUEUE_S)
            self._reserved += 1

    def _unreserve(self) -> None:
        with self._lock:
            self._reserved -= 1

    def _submit(self, entry: _Entry) -> None:
        with self._lock:
            self._reserved -= 1
            closed = self._closed
            if not closed:
                self._queue.append(entry)
                self._dispatch()
        if closed:  # registered while the server was shutting down: it will never run here
            self._end_unrun(entry.scan_id, "cancelled")

    def _dispatch(self) -> None:
        """Start queued scans while slots are free (the lock is held)."""
        while not self._closed and self._queue and len(self._running) < self.settings.max_scans:
            entry = self._queue.popleft()
            self._running[entry.scan_id] = entry
            entry.thread = threading.Thread(target=self._run, args=(entry,), name=f"scan-{entry.scan_id}",
                                            daemon=True)
            entry.thread.start()

    def _run(self, entry: _Entry) -> None:
        try:
            with self.sessions() as session:
                ended = db.scan_head(session, entry.scan_id).status != "running"  # cancelled while it waited
            if not ended:
                entry.work(entry.stop)
        except Exception:  # noqa: BLE001 - the scan ends failed (LocalScan records it); the server goes on
            _log.exception("scan %d failed", entry.scan_id)
        finally:
            with self._lock:
                self._running.pop(entry.scan_id, None)
                self._dispatch()

    def _register_embedded(self, source: ScanSource,
                           request: ScanRequest) -> tuple[int, Callable[[threading.Event], object]]:
        from dfscan.workers.scoring.local import LocalScan

        job = LocalScan(self.settings, source, name=request.name, incremental=request.incremental)
        scan_id = job.register(self.ctx)
        return scan_id, lambda stop: job.score(self.ctx, stop=stop)

    def _register_fleet(self, source: ScanSource,
                        request: ScanRequest) -> tuple[int, Callable[[threading.Event], object]]:
        from dfscan.workers.fleet.producer import Producer

        # A queued scan holds no database pool of its own: a producer for registering, another for producing.
        with Producer(self.settings) as producer:
            scan_id = producer.register(source, name=request.name, incremental=request.incremental)

        def produce(stop: threading.Event) -> object:
            with Producer(self.settings) as producer:
                return producer.produce(scan_id, stop=stop)

        return scan_id, produce

    def _end_unrun(self, scan_id: int, status: str) -> None:
        """End a scan that never ran (``failed`` or ``cancelled``) unless it has ended already."""
        with self.sessions.begin() as session:
            if db.scan_head(session, scan_id).status == "running":
                db.finish_scan(session, scan_id=scan_id, status=status)

    def cancel(self, scan_id: int) -> bool:
        """End the scan as cancelled (any scan of this database); a queued one leaves the queue, a running one
        stops after its batch in flight."""
        with self.sessions.begin() as session:
            changed = db.cancel_scan(session, scan_id)
        with self._lock:
            entry = self._running.get(scan_id)
            if entry is None:
                entry = next((e for e in self._queue if e.scan_id == scan_id), None)
                if entry is not None:
                    self._queue.remove(entry)
        if entry is not None:
            entry.stop.set()
        return changed

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop every scan of this process after its batch in flight; running and queued ones end ``cancelled``."""
        with self._lock:
            self._closed = True
            queued = list(self._queue)
            self._queue.clear()
            running = list(self._running.values())
        for entry in running:
            entry.stop.set()
        for entry in queued:
            self._end_unrun(entry.scan_id, "cancelled")
        self._registering.shutdown(wait=True)
        deadline = time.monotonic() + timeout_s
        for entry in running:
            if entry.thread is not None:
                entry.thread.join(timeout=max(0.0, deadline - time.monotonic()))
