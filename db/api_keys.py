"""API keys of `dfscan serve` and the callbacks of the scans they start.

A key is ``dfs_<prefix>_<secret>``; only its SHA-256 is stored, so a leaked
database does not leak working keys. The prefix is kept in clear to tell keys
apart in listings.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ._types import utcnow
from .errors import DatabaseError
from .models import ApiKey, Scan, ScanCallback

__all__ = [
    "ApiKeyInfo", "ApiKeyNotFound", "DueCallback", "NewApiKey", "add_callback", "authenticate", "callback_state",
    "claim_callback",
    "create_api_key", "due_callbacks", "hash_key", "list_api_keys", "record_callback_attempt", "revoke_api_key",
]  # fmt: skip

_SCAN_ENDED = ("completed", "failed", "cancelled")


class ApiKeyNotFound(DatabaseError):
    def __init__(self, key: str | int) -> None:
        super().__init__(f"no API key {key!r}")


@dataclass(frozen=True)
class ApiKeyInfo:
    id: int
    name: str
    prefix: str
    requests: int
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class NewApiKey:
    info: ApiKeyInfo
    token: str  # shown once
    signing_secret: str  # shown once: verifies callback signatures


@dataclass(frozen=True)
class DueCallback:
    scan_id: int
    url: str
    attempts: int
    signing_secret: str


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _info(row: ApiKey) -> ApiKeyInfo:
    return ApiKeyInfo(row.id, row.name, row.prefix, row.requests, row.created_at, row.last_used_at, row.revoked_at)


def create_api_key(session: Session, name: str) -> NewApiKey:
    prefix = secrets.token_hex(4)
    token = f"dfs_{prefix}_{secrets.token_urlsafe(32)}"
    signing = secrets.token_hex(32)
    row = ApiKey(name=name, prefix=prefix, key_hash=hash_key(token), signing_secret=signing, requests=0)
    session.add(row)
    session.flush()
    return NewApiKey(_info(row), token, signing)


def list_api_keys(session: Session) -> list[ApiKeyInfo]:
    return [_info(r) for r in session.execute(select(ApiKey).order_by(ApiKey.id)).scalars()]


def revoke_api_key(session: Session, key: str | int) -> ApiKeyInfo:
    """Revoke by id, name or prefix; revoking twice keeps the first time."""
    stmt = select(ApiKey)
    if isinstance(key, int) or str(key).isdigit():
        stmt = stmt.where(ApiKey.id == int(key))
    else:
        stmt = stmt.where((ApiKey.name == key) | (ApiKey.prefix == key))
    rows = session.execute(stmt).scalars().all()
    if len(rows) != 1:
        raise ApiKeyNotFound(key) if not rows else DatabaseError(f"{key!r} names {len(rows)} keys: revoke by id")
    row = rows[0]
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    session.flush()
    return _info(row)


def authenticate(session: Session, token: str) -> tuple[int, str] | None:
    """(key id, signing secret) of a valid, unrevoked key, counting this request; ``None`` otherwise."""
    row = session.execute(
        select(ApiKey.id, ApiKey.signing_secret).where(ApiKey.key_hash == hash_key(token), ApiKey.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    session.execute(update(ApiKey).where(ApiKey.id == row.id)
                    .values(requests=ApiKey.requests + 1, last_used_at=utcnow()))
    return row.id, row.signing_secret


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
        .where(Scan.status.in_(_SCAN_ENDED), ScanCallback.delivered_at.is_(None), ScanCallback.given_up_at.is_(None),
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
