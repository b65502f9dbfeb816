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
    """Renews a chunk's lease every ``renew_s`` in a thread while the chunk is scored; releases it at the end."""

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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{chunk_id}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=max(5.0, self.renew_s))
        if not self.release:
            return
        try:
            with self.sessions.begin() as session:
                release_lease(session, self.chunk_id, owner=self.owner)
        except Exception as err:  # noqa: BLE001 - the lease then runs out by itself
            log.warning("chunk %d: could not release its lease (%s); it runs out in %.0f s",
                        self.chunk_id, type(err).__name__, self.lease_s)

    def _run(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                with self.sessions.begin() as session:
                    held = renew_lease(session, self.chunk_id, owner=self.owner, lease_s=self.lease_s)
            except Exception as err:  # noqa: BLE001 - a database outage: try again next beat
                log.warning("chunk %d: lease renewal failed (%s)", self.chunk_id, describe(err))
                continue
            if not held and not self.lost:
                # The lease ran out (renewals failed for longer than the lease) and a reaper
                # re-enqueued the chunk: another worker may score it too, which rewrites the same rows.
                self.lost = True
                log.warning("chunk %d: its lease was taken over; finishing it anyway", self.chunk_id)


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
