"""Scan callbacks: a POST of the summary once a scan ends, signed, retried with back-off.

One thread polls the database for callbacks of ended scans, so a scan run by
the fleet, or one that ended while the server was down, is reported too.
The body is JSON; ``X-Dfscan-Signature: sha256=<hex>`` is the HMAC-SHA256 of
the exact body bytes under the key's signing secret; the body carries
``sent_at`` so a receiver can refuse old replays. Several servers on one
database claim each delivery first, so only one sends it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timezone

import httpx
from sqlalchemy.orm import Session, sessionmaker

from dfscan import db
from dfscan.db.callbacks import DueCallback, claim_callback, due_callbacks, record_callback_attempt

__all__ = ["CallbackDispatcher", "sign"]

log = logging.getLogger("dfscan.serve")

SIGNATURE_HEADER = "X-Dfscan-Signature"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def backoff_s(attempts: int) -> float:
    """1, 2, 4, 8 ... seconds, at most 5 minutes."""
    return float(min(300, 2 ** max(0, attempts - 1)))


class CallbackDispatcher:
    def __init__(self, sessions: sessionmaker[Session], *, max_attempts: int, summary: Callable[[Session, int], dict],
                 busy: Callable[[], set[int]], poll_s: float = 0.5, timeout_s: float = 10.0) -> None:
        self.sessions = sessions
        self.max_attempts = max_attempts
        self.summary = summary
        self.busy = busy  # scans still finishing in this process: wait for their last batch
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._client = httpx.Client(timeout=timeout_s, follow_redirects=False)
        self._thread = threading.Thread(target=self._loop, name="callbacks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        self._client.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with self.sessions() as session:
                    due = due_callbacks(session, max_attempts=self.max_attempts)
                busy = self.busy()
                for callback in due:
                    if callback.scan_id not in busy and not self._stop.is_set():
                        self._deliver(callback)
            except Exception:  # noqa: BLE001 - a database hiccup: try again at the next poll
                log.exception("callback dispatch failed; retrying")
            self._stop.wait(self.poll_s)

    def _deliver(self, callback: DueCallback) -> None:
        with self.sessions.begin() as session:
            if not claim_callback(session, scan_id=callback.scan_id, lease_s=60.0):
                return  # another server took it
        with self.sessions() as session:
            body = json.dumps({"event": "scan.finished", "sent_at": datetime.now(timezone.utc).isoformat(),
                               "scan": self.summary(session, callback.scan_id)},
                              default=str, sort_keys=True).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(callback.signing_secret, body),
                   "X-Dfscan-Scan-Id": str(callback.scan_id), "User-Agent": "dfscan-serve"}
        error: str | None = None
        try:
            response = self._client.post(callback.url, content=body, headers=headers)
            if response.status_code >= 300:
                error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        with self.sessions.begin() as session:
            record_callback_attempt(session, scan_id=callback.scan_id, error=error, max_attempts=self.max_attempts,
                                    backoff_s=backoff_s(callback.attempts + 1))
        if error is not None:
            log.warning("callback for scan %s to %s failed (attempt %s): %s", callback.scan_id, callback.url,
                        callback.attempts + 1, error)


def summary_dict(session: Session, scan_id: int) -> dict:
    return db.scan_summary(session, scan_id).as_dict()
