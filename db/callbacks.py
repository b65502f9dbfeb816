"""Callbacks of the scans that `dfscan serve` starts: due, claimed by one server, delivered or given up.

A scan started through the API with a callback URL has a ``scan_callbacks``
row; once the scan ends, a server polling the database claims the callback
(a lease on ``next_attempt_at``), delivers it signed with the API key's
signing secret, and records the attempt. A callback whose key has been
revoked is not sent: it is given up with that reason. A callback URL may hold
a secret (a token in its path or query, a password): what the API answers and
the log show of it is :func:`mask_callback_url`'s origin only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ._types import utcnow
from .models import ApiKey, Scan, ScanCallback
from .records import SCAN_END_STATUSES

__all__ = ["REVOKED_KEY", "DueCallback", "add_callback", "callback_state", "claim_callback", "due_callbacks",
           "give_up_revoked", "mask_callback_url", "record_callback_attempt"]  # fmt: skip

REVOKED_KEY = "API key revoked"


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
               ApiKey.revoked_at.is_(None), ScanCallback.attempts < max_attempts,
               (ScanCallback.next_attempt_at.is_(None)) | (ScanCallback.next_attempt_at <= now))
        .order_by(ScanCallback.scan_id)
        .limit(limit)
    ).all()
    return [DueCallback(r.scan_id, r.url, r.attempts, r.signing_secret) for r in rows]


def give_up_revoked(session: Session) -> int:
    """Give up every pending callback whose key is revoked (reason :data:`REVOKED_KEY`); how many."""
    pending = session.execute(
        select(ScanCallback.scan_id)
        .join(ApiKey, ApiKey.id == ScanCallback.api_key_id)
        .where(ApiKey.revoked_at.is_not(None), ScanCallback.delivered_at.is_(None), ScanCallback.given_up_at.is_(None))
    ).scalars().all()
    if not pending:  # the usual case: a read, no write lock (SQLite has one writer)
        return 0
    session.execute(
        update(ScanCallback)
        .where(ScanCallback.scan_id.in_(pending), ScanCallback.delivered_at.is_(None),
               ScanCallback.given_up_at.is_(None))
        .values(given_up_at=utcnow(), last_error=REVOKED_KEY)
        .execution_options(synchronize_session=False)
    )
    return len(pending)


def claim_callback(session: Session, *, scan_id: int, lease_s: float) -> bool:
    """Take a due callback for ``lease_s``: of several servers polling one database, exactly one delivers it.

    A callback whose key was revoked since it was found due is not taken.
    """
    now = utcnow()
    active = select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).scalar_subquery()
    result = session.execute(
        update(ScanCallback)
        .where(ScanCallback.scan_id == scan_id, ScanCallback.delivered_at.is_(None),
               ScanCallback.given_up_at.is_(None), ScanCallback.api_key_id.in_(active),
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
    return {"url": mask_callback_url(row.url), "attempts": row.attempts, "delivered_at": row.delivered_at,
            "given_up_at": row.given_up_at, "last_error": row.last_error}


def mask_callback_url(url: str) -> str:
    """``scheme://host[:port]/…``: the origin, without the path, query or user:password that may hold a secret."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "(not a valid URL)"
    if not parts.scheme or not host:
        return "(not a valid URL)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{f':{port}' if port is not None else ''}/…"
