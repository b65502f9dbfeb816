"""Scans started through the API: checked against the allowed roots, run in the background or by the fleet.

Without a broker, each scan runs as the embedded :class:`LocalScan` in a
thread of the server (it loads its own runtime); with one, a
:class:`Producer` registers it and enqueues its chunks from a thread. Either
way the scan is the same rows in the same tables as `dfscan scan` writes.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from dfscan import db
from dfscan.db.callbacks import add_callback
from dfscan.scanner import ScanSource, WalkOptions, check_roots
from dfscan.scanner.errors import ScannerError
from dfscan.serve.errors import BadRequest, Forbidden
from dfscan.core.settings import Settings

__all__ = ["ScanRequest", "ScanService", "check_allowed"]

_START_TIMEOUT_S = 300.0


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


class ScanService:
    """The scans this process started and is still running, so they can be stopped."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions
        self._stops: dict[int, threading.Event] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._lock = threading.Lock()

    def active(self) -> set[int]:
        with self._lock:
            return {sid for sid, t in self._threads.items() if t.is_alive()}

    def start(self, request: ScanRequest, *, api_key_id: int) -> int:
        roots = check_allowed(request.roots, self.settings.serve_roots)
        # Symbolic links are not followed: one could lead out of the allowed prefixes.
        source = ScanSource(tuple(roots), (), WalkOptions(extensions=self.settings.scan_extensions, follow_symlinks=False))
        stop = threading.Event()
        if self.settings.broker_url:
            scan_id, thread = self._start_fleet(source, request, stop)
        else:
            scan_id, thread = self._start_embedded(source, request, stop)
        if request.callback_url:
            with self.sessions.begin() as session:
                add_callback(session, scan_id=scan_id, api_key_id=api_key_id, url=request.callback_url)
        with self._lock:
            self._stops[scan_id] = stop
            self._threads[scan_id] = thread
        return scan_id

    def _start_embedded(self, source: ScanSource, request: ScanRequest,
                        stop: threading.Event) -> tuple[int, threading.Thread]:
        from dfscan.workers.scoring.local import LocalScan

        job = LocalScan(self.settings, source, name=request.name, incremental=request.incremental)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                job.run(stop=stop)
            except BaseException as exc:  # noqa: BLE001 - reported to the request, or logged by the thread
                failure.append(exc)
                raise

        thread = threading.Thread(target=run, name="scan", daemon=True)
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while job.scan_id is None:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the scan did not start: {failure[0] if failure else 'timed out'}")
            time.sleep(0.01)
        # LocalScan knows its id before the scan row is committed: wait until others can see it.
        while not self._visible(job.scan_id):
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the scan did not start: {failure[0] if failure else 'timed out'}")
            time.sleep(0.01)
        return job.scan_id, thread

    def _visible(self, scan_id: int) -> bool:
        try:
            with self.sessions() as session:
                db.scan_head(session, scan_id)
        except db.ScanNotFound:
            return False
        return True

    def _start_fleet(self, source: ScanSource, request: ScanRequest,
                     stop: threading.Event) -> tuple[int, threading.Thread]:
        from dfscan.workers.fleet.producer import Producer

        producer = Producer(self.settings)
        try:
            scan_id = producer.register(source, name=request.name, incremental=request.incremental)
        except BaseException:
            producer.close()
            raise

        def run() -> None:
            try:
                producer.produce(scan_id, stop=stop)
            finally:
                producer.close()

        thread = threading.Thread(target=run, name="produce", daemon=True)
        thread.start()
        return scan_id, thread

    def cancel(self, scan_id: int) -> bool:
        """End the scan as cancelled (any scan of this database); stop its thread here if it has one."""
        with self.sessions.begin() as session:
            changed = db.cancel_scan(session, scan_id)
        with self._lock:
            stop = self._stops.get(scan_id)
        if stop is not None:
            stop.set()
        return changed

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop every scan of this process after its batch in flight; they end ``cancelled``."""
        with self._lock:
            stops = list(self._stops.values())
            threads = list(self._threads.values())
        for stop in stops:
            stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
