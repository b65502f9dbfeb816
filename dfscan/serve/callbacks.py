"""Scan callbacks: a POST of the summary once a scan ends, signed, retried with back-off.

One thread polls the database for callbacks of ended scans, so a scan run by
the fleet, or one that ended while the server was down, is reported too; a
small pool delivers several at once, so one slow receiver holds up only its
own. The body is JSON; ``X-Dfscan-Signature: sha256=<hex>`` is the HMAC-SHA256
of the exact body bytes under the key's signing secret; the body carries
``sent_at`` so a receiver can refuse old replays. Several servers on one
database claim each delivery first, so only one sends it. A revoked key's
callbacks are given up, not sent.

Each delivery checks its URL again (:mod:`dfscan.serve.addresses`) and
connects to the address that was checked, sending the URL's host name in
``Host`` and, for https, in SNI, where the certificate is verified against it.
One deadline covers connecting, sending and reading; at most
``max_response_bytes`` of the answer are read; redirects are not followed.
What is recorded of a failure is a short reason, never the receiver's answer.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import http.client
import io
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from urllib.parse import quote

from sqlalchemy.orm import Session, sessionmaker

from dfscan import db
from dfscan.db.callbacks import (
    DueCallback,
    claim_callback,
    due_callbacks,
    give_up_revoked,
    mask_callback_url,
    record_callback_attempt,
)
from dfscan.serve.addresses import AddressPolicy, Target
from dfscan.serve.errors import CallbackRefused
from dfscan.core.settings import Settings

__all__ = ["CallbackDispatcher", "Deliveries", "post", "sign"]

log = logging.getLogger("dfscan.serve")

SIGNATURE_HEADER = "X-Dfscan-Signature"
_PATH_SAFE = "!#$%&'()*+,/:;=?@[]~"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def backoff_s(attempts: int) -> float:
    """1, 2, 4, 8 ... seconds, at most 5 minutes."""
    return float(min(300, 2 ** max(0, attempts - 1)))


class _TooLarge(Exception):
    """The answer is longer than the bytes a delivery reads."""


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left; ``TimeoutError`` once there are none."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left


class _CappedSocket(io.RawIOBase):
    """Reads of a socket, each under what is left of the deadline, and no more than ``limit`` bytes in all."""

    def __init__(self, sock: socket.socket, deadline: _Deadline, limit: int) -> None:
        self.sock, self.deadline, self.left = sock, deadline, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.left <= 0:
            raise _TooLarge
        self.sock.settimeout(self.deadline.left())
        n = self.sock.recv_into(memoryview(buffer)[: min(len(buffer), self.left)])
        self.left -= n
        return n

    def makefile(self, mode: str = "rb") -> io.BufferedReader:
        """What :class:`http.client.HTTPResponse` reads the answer from."""
        return io.BufferedReader(self)


def _connect(target: Target, deadline: _Deadline, tls: ssl.SSLContext) -> socket.socket:
    """A connection to the first checked address that answers; TLS verified against the URL's host name."""
    failure: OSError = ConnectionError("no address")
    for address in target.addresses:
        try:
            sock = socket.create_connection((address, target.port), timeout=deadline.left())
            break
        except OSError as exc:
            failure = exc
    else:
        raise failure
    if target.scheme != "https":
        return sock
    try:
        sock.settimeout(deadline.left())
        return tls.wrap_socket(sock, server_hostname=target.host)
    except BaseException:
        sock.close()
        raise


def _request(target: Target, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {quote(target.path, safe=_PATH_SAFE)} HTTP/1.1", f"Host: {target.host_header}",
             f"Content-Length: {len(body)}", "Connection: close"]
    if target.userinfo is not None:
        lines.append("Authorization: Basic " + base64.b64encode(":".join(target.userinfo).encode()).decode())
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _exchange(target: Target, request: bytes, deadline: _Deadline, max_bytes: int, tls: ssl.SSLContext) -> int:
    """Send ``request``, read the answer's status (and at most ``max_bytes`` in all); the status code."""
    with _connect(target, deadline, tls) as sock:
        sock.settimeout(deadline.left())
        sock.sendall(request)
        capped = _CappedSocket(sock, deadline, max_bytes)
        response = http.client.HTTPResponse(capped, method="POST")  # type: ignore[arg-type]
        response.begin()
        try:  # the receiver's body is read (to let it finish) and dropped; the status decides
            while response.read(16384):
                pass
        except (_TooLarge, OSError, http.client.HTTPException):
            pass
        return response.status


def post(target: Target, body: bytes, headers: dict[str, str], *, deadline_s: float, max_response_bytes: int,
         tls: ssl.SSLContext) -> str | None:
    """POST ``body`` to a checked target; ``None`` when it answers 2xx, else a short reason."""
    deadline = _Deadline(deadline_s)
    try:
        status = _exchange(target, _request(target, body, headers), deadline, max_response_bytes, tls)
    except TimeoutError:
        return f"timed out after {deadline_s:g} s"
    except _TooLarge:
        return f"answer headers over {max_response_bytes} bytes"
    except ssl.SSLCertVerificationError:
        return f"TLS certificate not valid for {target.host}"
    except ssl.SSLError:
        return "TLS handshake failed"
    except http.client.HTTPException:
        return "not an HTTP answer"
    except ConnectionRefusedError:
        return "connection refused"
    except OSError as exc:
        return f"connection failed ({errno.errorcode.get(exc.errno or 0, 'error')})"
    if 200 <= status < 300:
        return None
    return f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")


class Deliveries:
    """Signed POSTs the database says are due: one thread polls, a small pool sends, one delivery per key at once.

    A subclass says what is due (:meth:`due`), which key a delivery is kept apart by (:meth:`key`) and how one is
    claimed, made and recorded (:meth:`deliver`, which sends with :meth:`send`).
    """

    kind = "delivery"  # for the log

    def __init__(self, sessions: sessionmaker[Session], settings: Settings, *, max_attempts: int,
                 poll_s: float = 0.5) -> None:
        self.sessions = sessions
        self.max_attempts = max_attempts
        self.policy = AddressPolicy(settings.callback_allow)
        self.poll_s = poll_s
        self.deadline_s = settings.callback_deadline_s
        self.max_response_bytes = settings.callback_max_response_bytes
        self.parallel = settings.callback_parallel
        self._tls = ssl.create_default_context()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._in_flight: set = set()
        self._pool = ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix=self.kind)
        self._thread = threading.Thread(target=self._loop, name=f"{self.kind}s", daemon=True)

    @property
    def lease_s(self) -> float:
        """How long a claimed delivery is this server's: longer than any try of it takes."""
        return 60.0 + 2 * self.deadline_s

    def check_url(self, url: str) -> None:
        """Raise :class:`CallbackRefused` for a URL no delivery would reach (checked when it is submitted)."""
        self.policy.check(url)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def due(self) -> list:
        raise NotImplementedError

    def key(self, item) -> object:
        raise NotImplementedError

    def deliver(self, item) -> None:
        raise NotImplementedError

    def send(self, url: str, secret: str, body: bytes, scan_id: int) -> str | None:
        """POST ``body`` signed with ``secret`` to ``url`` once its address is checked; None or a short reason."""
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body),
                   "X-Dfscan-Scan-Id": str(scan_id), "User-Agent": "dfscan-serve"}
        try:
            target = self.policy.check(url)
        except CallbackRefused as exc:
            return str(exc)
        return post(target, body, headers, deadline_s=self.deadline_s, max_response_bytes=self.max_response_bytes,
                    tls=self._tls)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                for item in self.due():
                    if not self._stop.is_set():
                        self._submit(item)
            except Exception:  # noqa: BLE001 - a database hiccup: try again at the next poll
                log.exception("%s dispatch failed; retrying", self.kind)
            self._stop.wait(self.poll_s)

    def _submit(self, item) -> None:
        key = self.key(item)
        with self._lock:
            if key in self._in_flight or len(self._in_flight) >= self.parallel:
                return
            self._in_flight.add(key)
        self._pool.submit(self._deliver_once, item, key)

    def _deliver_once(self, item, key: object) -> None:
        try:
            self.deliver(item)
        except Exception:  # noqa: BLE001 - a database hiccup: the delivery is due again after its lease
            log.exception("%s %s failed; retrying", self.kind, key)
        finally:
            with self._lock:
                self._in_flight.discard(key)


class CallbackDispatcher(Deliveries):
    """A scan's summary to its callback URL once the scan ends, signed with its API key's secret."""

    kind = "callback"

    def __init__(self, sessions: sessionmaker[Session], *, max_attempts: int, summary: Callable[[Session, int], dict],
                 busy: Callable[[], set[int]], settings: Settings | None = None, poll_s: float = 0.5) -> None:
        super().__init__(sessions, settings or Settings(), max_attempts=max_attempts, poll_s=poll_s)
        self.summary = summary
        self.busy = busy  # scans still finishing in this process: wait for their last batch

    def due(self) -> list[DueCallback]:
        with self.sessions.begin() as session:
            revoked = give_up_revoked(session)
        if revoked:
            log.warning("%s callback(s) given up: their API key is revoked", revoked)
        with self.sessions() as session:
            due = due_callbacks(session, max_attempts=self.max_attempts)
        busy = self.busy()
        return [callback for callback in due if callback.scan_id not in busy]

    def key(self, item: DueCallback) -> object:
        return item.scan_id

    def deliver(self, item: DueCallback) -> None:
        with self.sessions.begin() as session:
            if not claim_callback(session, scan_id=item.scan_id, lease_s=self.lease_s):
                return  # another server took it, or its key was revoked
        with self.sessions() as session:
            body = json.dumps({"event": "scan.finished", "sent_at": datetime.now(timezone.utc).isoformat(),
                               "scan": self.summary(session, item.scan_id)},
                              default=str, sort_keys=True).encode()
        error = self.send(item.url, item.signing_secret, body, item.scan_id)
        with self.sessions.begin() as session:
            record_callback_attempt(session, scan_id=item.scan_id, error=error, max_attempts=self.max_attempts,
                                    backoff_s=backoff_s(item.attempts + 1))
        if error is not None:
            log.warning("callback for scan %s to %s failed (attempt %s): %s", item.scan_id,
                        mask_callback_url(item.url), item.attempts + 1, error)


def summary_dict(session: Session, scan_id: int) -> dict:
    return db.scan_summary(session, scan_id).as_dict()
