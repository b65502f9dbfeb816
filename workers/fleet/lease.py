"""Chunk leases on the worker's side: who we are, the heartbeat while we score, the reaper.

A worker whose whole host dies (node lost, container OOM-killed, spot
instance reclaimed) leaves its chunk unacknowledged in Redis until the
visibility timeout (an hour by default): nobody is left to give it back.  The
database lease fixes that: the worker holding a chunk renews its lease every
few seconds (:class:`Heartbeat`), and any live process (every worker, the
producer under ``--wait``) runs a :class:`Reaper` that re-enqueues queued
chunks whose lease ran out.  A stale copy of the message that turns up later
finds the chunk done, or leased by a live worker, and is dropped.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from dfscan.core.errors import first_line
from dfscan.db.leases import (
    ReapedChunk,
    clear_requeue_leases,
    reap_expired_leases,
    release_lease,
    renew_lease,
)
from dfscan.scanner.chunks import Chunk

__all__ = ["Heartbeat", "Reaper", "describe", "holder_alive", "lease_owner"]

log = logging.getLogger(__name__)

_HOST = socket.gethostname()[:200]


def describe(exc: BaseException) -> str:
    """``Type: first line`` of an error, for a one-line warning."""
    return f"{type(exc).__name__}: {first_line(exc) if str(exc).strip() else ''}"


def lease_owner(pid: int | None = None) -> str:
    """This process as a lease holder: ``host:pid``."""
    return f"{_HOST}:{os.getpid() if pid is None else pid}"


def holder_alive(owner: str) -> bool:
    """False only when ``owner`` is a process of this host that no longer exists.

    A pool process killed mid-chunk is replaced on the same host, and its
    chunk redelivered at once: the new process takes the lease over instead of
    waiting for it to run out.  A holder on another host is trusted until its
    lease expires.
    """
    host, _, pid_text = owner.rpartition(":")
    if host != _HOST or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its parent) holds nothing.
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


class Heartbeat:
    """Renews a chunk's lease every ``renew_s`` while the chunk is scored; releases it at the end.

    The renewals run on the process's one heartbeat thread (:class:`_Beats`), started with the first
    chunk: a chunk only registers and unregisters itself.  Starting a thread per chunk cost its
    worker a wait for the new thread to be scheduled, on every chunk, which on a loaded machine was a
    third of the worker's time per chunk (py-spy, tests/bench/bench_distributed.py).
    """

    def __init__(self, sessions: sessionmaker[Session], chunk_id: int, *, owner: str, lease_s: float,
                 renew_s: float) -> None:
        self.sessions = sessions
        self.chunk_id = chunk_id
        self.owner = owner
        self.lease_s = lease_s
        self.renew_s = renew_s
        self.lost = False
        # Cleared by a caller whose last commit ended the lease itself (finish_chunk does): no extra transaction.
        self.release = True
        self.next_at = 0.0
        self._lock = threading.Lock()  # held by a renewal in flight; __exit__ waits for it
        self._done = False

    def __enter__(self) -> "Heartbeat":
        self.next_at = time.monotonic() + self.renew_s
        _BEATS.add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _BEATS.remove(self)
        with self._lock:  # no renewal runs after this
            self._done = True
        if not self.release:
            return
        try:
            with self.sessions.begin() as session:
                release_lease(session, self.chunk_id, owner=self.owner)
        except Exception as err:  # noqa: BLE001 - the lease then runs out by itself
            log.warning("chunk %d: could not release its lease (%s); it runs out in %.0f s",
                        self.chunk_id, type(err).__name__, self.lease_s)

    def beat(self) -> None:
        """One renewal, unless the chunk has ended; the next one is due ``renew_s`` later."""
        with self._lock:
            if self._done:
                return
            self.next_at = time.monotonic() + self.renew_s
            try:
                with self.sessions.begin() as session:
                    held = renew_lease(session, self.chunk_id, owner=self.owner, lease_s=self.lease_s)
            except Exception as err:  # noqa: BLE001 - a database outage: try again next beat
                log.warning("chunk %d: lease renewal failed (%s)", self.chunk_id, describe(err))
                return
            if not held and not self.lost:
                # The lease ran out (renewals failed for longer than the lease) and a reaper
                # re-enqueued the chunk: another worker may score it too, which rewrites the same rows.
                self.lost = True
                log.warning("chunk %d: its lease was taken over; finishing it anyway", self.chunk_id)


class _Beats:
    """The process's heartbeat thread: renews each registered :class:`Heartbeat` when it is due."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a forked pool process starts its own

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._active: dict[int, Heartbeat] = {}
        self._thread: threading.Thread | None = None

    def add(self, beat: Heartbeat) -> None:
        with self._cond:
            self._active[id(beat)] = beat
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)
                self._thread.start()
            self._cond.notify()

    def remove(self, beat: Heartbeat) -> None:
        with self._cond:
            self._active.pop(id(beat), None)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [b for b in self._active.values() if b.next_at <= now]
                if not due:
                    soonest = min((b.next_at for b in self._active.values()), default=now + 60.0)
                    self._cond.wait(timeout=max(0.01, soonest - now))
                    continue
            for beat in due:
                beat.beat()


_BEATS = _Beats()


class Reaper:
    """Re-enqueues chunks of running scans whose lease ran out.

    ``publish(chunk)`` sends one chunk message.  :meth:`run_once` is one pass;
    :meth:`start` runs passes every ``interval_s`` in a daemon thread.
    """

    def __init__(self, sessions: sessionmaker[Session], publish: Callable[[Chunk], None], *, lease_s: float,
                 interval_s: float, name: str | None = None) -> None:
        self.sessions = sessions
        self.publish = publish
        self.lease_s = lease_s
        self.interval_s = interval_s
        self.name = name or lease_owner()
        self.requeued = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> list[ReapedChunk]:
        """Re-enqueue every expired chunk this reaper wins; returns them."""
        with self.sessions.begin() as session:
            reaped = reap_expired_leases(session, reaper=self.name, lease_s=self.lease_s)
        if not reaped:
            return []
        for r in reaped:
            log.warning("chunk %d of scan %d: the lease of %s expired; enqueued again", r.seq, r.scan_id,
                        r.expired_owner or "its worker")
            self.publish(Chunk(r.scan_id, r.seq, tuple(r.paths), r.chunk_id))
        with self.sessions.begin() as session:
            clear_requeue_leases(session, [r.chunk_id for r in reaped], reaper=self.name)
        self.requeued += len(reaped)
        return reaped

    def start(self) -> "Reaper":
        self._thread = threading.Thread(target=self._run, name="lease-reaper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception as err:  # noqa: BLE001 - the next pass tries again
                log.warning("lease reaper: %s", describe(err))
