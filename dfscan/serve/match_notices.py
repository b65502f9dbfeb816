"""Delivering match notices: a POST per matched file to its scan's callback and to each matched bank's webhook.

As scan callbacks are delivered (:mod:`dfscan.serve.callbacks`, whose
address checks, ``post`` and ``sign`` this uses): one thread polls the
database (:mod:`dfscan.db.notices`), a small pool sends, each notice is
claimed by one server first, checked against the address policy at delivery,
signed (``X-Dfscan-Signature: sha256=<HMAC-SHA256 of the body>``) with the
scan's API key's secret or the bank's webhook secret, and retried with
back-off up to ``callback_attempts`` times.  The body: ``event`` "match",
``sent_at``, ``scan_id``, ``path`` and the file's ``matches`` (a bank's
webhook: that bank's only).
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from sqlalchemy.orm import Session, sessionmaker

from dfscan.core.settings import Settings
from dfscan.db.callbacks import mask_callback_url
from dfscan.db.notices import DueNotice, claim_notice, due_notices, notice_matches, record_notice_attempt
from dfscan.serve.addresses import AddressPolicy
from dfscan.serve.callbacks import SIGNATURE_HEADER, backoff_s, post, sign
from dfscan.serve.errors import CallbackRefused

__all__ = ["MatchNoticeDispatcher"]

log = logging.getLogger("dfscan.serve")


class MatchNoticeDispatcher:
    def __init__(self, sessions: sessionmaker[Session], settings: Settings, poll_s: float = 0.5) -> None:
        self.sessions = sessions
        self.max_attempts = settings.callback_attempts
        self.policy = AddressPolicy(settings.callback_allow)
        self.deadline_s = settings.callback_deadline_s
        self.max_response_bytes = settings.callback_max_response_bytes
        self.poll_s = poll_s
        self._tls = ssl.create_default_context()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._in_flight: set[int] = set()
        self._pool = ThreadPoolExecutor(max_workers=settings.callback_parallel, thread_name_prefix="notice")
        self._thread = threading.Thread(target=self._loop, name="match-notices", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with self.sessions() as session:
                    due = due_notices(session, max_attempts=self.max_attempts)
                for notice in due:
                    with self._lock:
                        if notice.id in self._in_flight:
                            continue
                        self._in_flight.add(notice.id)
                    self._pool.submit(self._deliver_once, notice)
            except Exception:  # noqa: BLE001 - a database hiccup: try again at the next poll
                log.exception("match notice dispatch failed; retrying")
            self._stop.wait(self.poll_s)

    def _deliver_once(self, notice: DueNotice) -> None:
        try:
            self._deliver(notice)
        except Exception:  # noqa: BLE001 - a database hiccup: the notice is due again after its lease
            log.exception("match notice %s failed; retrying", notice.id)
        finally:
            with self._lock:
                self._in_flight.discard(notice.id)

    def _deliver(self, notice: DueNotice) -> None:
        with self.sessions.begin() as session:
            if not claim_notice(session, notice.id, lease_s=60.0 + 2 * self.deadline_s):
                return
        with self.sessions() as session:
            matches = notice_matches(session, notice)
        body = json.dumps({"event": "match", "sent_at": datetime.now(timezone.utc).isoformat(),
                           "scan_id": notice.scan_id, "path": notice.path, "matches": matches},
                          sort_keys=True).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(notice.secret, body),
                   "X-Dfscan-Scan-Id": str(notice.scan_id), "User-Agent": "dfscan-serve"}
        try:
            target = self.policy.check(notice.url)
        except CallbackRefused as exc:
            error: str | None = str(exc)
        else:
            error = post(target, body, headers, deadline_s=self.deadline_s,
                         max_response_bytes=self.max_response_bytes, tls=self._tls)
        with self.sessions.begin() as session:
            record_notice_attempt(session, notice.id, error=error, max_attempts=self.max_attempts,
                                  backoff_s=backoff_s(notice.attempts + 1))
        if error is not None:
            log.warning("match notice for %s to %s failed (attempt %s): %s", notice.path,
                        mask_callback_url(notice.url), notice.attempts + 1, error)
