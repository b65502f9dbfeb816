"""Callbacks of the scans that `dfscan serve` starts: due, claimed by one server, delivered or given up.

A scan started through the API with a callback URL has a ``scan_callbacks``
row; once the scan ends, a server polling the database claims the callback
(a lease on ``next_attempt_at``), delivers it signed with the API key's
signing secret, and records the attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ._types import utcnow
from .models import ApiKey, Scan, ScanCallback
from .records import SCAN_END_STATUSES

__all__ = ["DueCallback", "add_callback", "callback_state", "claim_callback", "due_callbacks",
           "record_callback_attempt"]  # fmt: skip


@dataclass(frozen=True)
class DueCallback:
    scan_id: int
    url: str
    attempts: int
    signing_secret: str


def add_callback(session: Session, *, scan_id: int, api_key_id: int, url: str) -> None:
    session.add(ScanCallback(scan_id=scan_id, api_key_id=api_key_id, url=url, attempts=0))
    session.flush()


def due_callbacks(session: Session, *, max_attempts: int, limit: int = 20) -> list[DueCallback]:
    """Callbacks of ended scans, neither delivered nor given up, whose next try is due."""
    now = utcnow()
    rows = session.execute(
        select(ScanCallback.scan_id, ScanCallback.url, ScanCallback.attempts, ApiKey.signing_secret)
        .join(Scan, Scan.id == ScanCallback.scan_id)
        .join(ApiKey, ApiKey.id == ScanCallback.api_key_id)
        .where(Scan.status.in_(SCAN_END_STATUSES), ScanCallback.delivered_at.is_(None), ScanCallback.given_up_at.is_(None),
               ScanCallback.attempts < max_attempts,
               (ScanCallback.next_attempt_at.is_(None)) | (ScanCallback.next_attempt_at <= now))
        .order_by(ScanCallback.scan_id)
        .limit(limit)
    ).all()
    return [DueCallback(r.scan_id, r.url, r.attempts, r.signing_secret) for r in rows]


def claim_callback(session: Session, *, scan_id: int, lease_s: float) -> bool:
    """Take a due callback for ``lease_s``: of several servers polling one database, exactly one delivers it."""
    now = utcnow()
    result = session.execute(
        update(ScanCallback)
        .where(ScanCallback.scan_id == scan_id, ScanCallback.delivered_at.is_(None),
               ScanCallback.given_up_at.is_(None),
               (ScanCallback.next_attempt_at.is_(None)) | (ScanCallback.next_attempt_at <= now))
        .values(next_attempt_at=now + timedelta(seconds=lease_s))
    )
    return result.rowcount == 1


def record_callback_attempt(session: Session, *, scan_id: int, error: str | None, max_attempts: int,
                            backoff_s: float) -> None:
    """One try: delivered (``error`` None), or retried after ``backoff_s``, or given up after the last."""
    row = session.get(ScanCallback, scan_id)
    if row is None:
        return
    now = utcnow()
    row.attempts += 1
    if error is None:
        row.delivered_at = now
        row.last_error = None
    else:
        row.last_error = error[:500]
        if row.attempts >= max_attempts:
            row.given_up_at = now
        else:
            row.next_attempt_at = now + timedelta(seconds=backoff_s)
    session.flush()


def callback_state(session: Session, scan_id: int) -> dict | None:
    row = session.get(ScanCallback, scan_id)
    if row is None:
        return None
    return {"url": row.url, "attempts": row.attempts, "delivered_at": row.delivered_at,
            "given_up_at": row.given_up_at, "last_error": row.last_error}
