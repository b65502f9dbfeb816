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
from datetime import datetime, timezone

from sqlalchemy.orm import Session, sessionmaker

from dfscan.core.settings import Settings
from dfscan.db.callbacks import mask_callback_url
from dfscan.db.notices import DueNotice, claim_notice, due_notices, notice_matches, record_notice_attempt
from dfscan.serve.callbacks import Deliveries, backoff_s

__all__ = ["MatchNoticeDispatcher"]

log = logging.getLogger("dfscan.serve")


class MatchNoticeDispatcher(Deliveries):
    kind = "match notice"

    def __init__(self, sessions: sessionmaker[Session], settings: Settings, poll_s: float = 0.5) -> None:
        super().__init__(sessions, settings, max_attempts=settings.callback_attempts, poll_s=poll_s)

    def due(self) -> list[DueNotice]:
        with self.sessions() as session:
            return due_notices(session, max_attempts=self.max_attempts)

    def key(self, item: DueNotice) -> object:
        return item.id

    def deliver(self, item: DueNotice) -> None:
        with self.sessions.begin() as session:
            if not claim_notice(session, item.id, lease_s=self.lease_s):
                return
        with self.sessions() as session:
            matches = notice_matches(session, item)
        body = json.dumps({"event": "match", "sent_at": datetime.now(timezone.utc).isoformat(),
                           "scan_id": item.scan_id, "path": item.path, "matches": matches},
                          sort_keys=True).encode()
        error = self.send(item.url, item.secret, body, item.scan_id)
        with self.sessions.begin() as session:
            record_notice_attempt(session, item.id, error=error, max_attempts=self.max_attempts,
                                  backoff_s=backoff_s(item.attempts + 1))
        if error is not None:
            log.warning("match notice for %s to %s failed (attempt %s): %s", item.path,
                        mask_callback_url(item.url), item.attempts + 1, error)
