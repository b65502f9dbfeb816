"""API keys of `dfscan serve`: creating, listing, revoking, authenticating.

A key is ``dfs_<prefix>_<secret>``; only its SHA-256 is stored, so a leaked
database does not leak working keys. The prefix is kept in clear to tell keys
apart in listings.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, or_, select, true, update
from sqlalchemy.orm import Session

from ._types import utcnow
from .errors import DatabaseError, ScanNotFound
from .models import API_KEY_ROLES, ApiKey, Scan

__all__ = ["API_KEY_ROLES", "ApiKeyInfo", "ApiKeyNotFound", "AuthorizedKey", "NewApiKey", "UnknownRole", "authenticate",
           "check_scan_visible", "create_api_key", "hash_key", "list_api_keys", "revoke_api_key",
           "set_scan_owner", "visible_scans", "visible_to"]  # fmt: skip


class ApiKeyNotFound(DatabaseError):
    def __init__(self, key: str | int) -> None:
        super().__init__(f"no API key {key!r}")


class UnknownRole(DatabaseError):
    def __init__(self, role: str) -> None:
        super().__init__(f"unknown role {role!r}: known roles are {', '.join(API_KEY_ROLES)}")


@dataclass(frozen=True)
class AuthorizedKey:
    """A valid key as a request holds it: who it is, what signs its callbacks, and what it may see."""

    id: int
    signing_secret: str
    role: str
    name: str = ""
    team: str | None = None  # a reviewer sees the scans started by keys of its team

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def is_reviewer(self) -> bool:
        return self.role == "reviewer"


@dataclass(frozen=True)
class ApiKeyInfo:
    id: int
    name: str
    prefix: str
    requests: int
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    role: str
    team: str | None = None


@dataclass(frozen=True)
class NewApiKey:
    info: ApiKeyInfo
    token: str  # shown once
    signing_secret: str  # shown once: verifies callback signatures


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _info(row: ApiKey) -> ApiKeyInfo:
    return ApiKeyInfo(row.id, row.name, row.prefix, row.requests, row.created_at, row.last_used_at, row.revoked_at,
                      row.role, row.team)


def create_api_key(session: Session, name: str, role: str = API_KEY_ROLES[0], team: str | None = None) -> NewApiKey:
    """A new key of ``role``: ``scanner`` sees its own scans, ``reviewer`` reviews the scans of keys of its
    ``team``, ``admin`` every scan and the operations endpoints."""
    if role not in API_KEY_ROLES:
        raise UnknownRole(role)
    if team is not None and not 0 < len(team) <= 64:
        raise DatabaseError(f"a team name has 1 to 64 characters, not {len(team)}")
    prefix = secrets.token_hex(4)
    token = f"dfs_{prefix}_{secrets.token_urlsafe(32)}"
    signing = secrets.token_hex(32)
    row = ApiKey(name=name, prefix=prefix, key_hash=hash_key(token), signing_secret=signing, requests=0, role=role,
                 team=team)
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


def authenticate(session: Session, token: str) -> AuthorizedKey | None:
    """The valid, unrevoked key of ``token``, counting this request; ``None`` otherwise."""
    row = session.execute(
        select(ApiKey.id, ApiKey.signing_secret, ApiKey.role, ApiKey.name, ApiKey.team)
        .where(ApiKey.key_hash == hash_key(token), ApiKey.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    session.execute(update(ApiKey).where(ApiKey.id == row.id)
                    .values(requests=ApiKey.requests + 1, last_used_at=utcnow()))
    return AuthorizedKey(row.id, row.signing_secret, row.role, row.name, row.team)


def set_scan_owner(session: Session, scan_id: int, api_key_id: int) -> None:
    """Record the key that started ``scan_id``: from then on only it (and admin keys) see the scan."""
    session.execute(update(Scan).where(Scan.id == scan_id).values(api_key_id=api_key_id))


def visible_to(key: AuthorizedKey) -> ColumnElement[bool]:
    """The SQL condition on ``scans`` of what ``key`` may see: every scan for an admin; its own scans; and for a
    reviewer, the scans started by keys of its team (a key without a team has none)."""
    if key.is_admin:
        return true()
    own = Scan.api_key_id == key.id
    if key.is_reviewer and key.team is not None:
        return or_(own, Scan.api_key_id.in_(select(ApiKey.id).where(ApiKey.team == key.team)))
    return own


def check_scan_visible(session: Session, scan_id: int, key: AuthorizedKey) -> None:
    """Raise :class:`ScanNotFound` unless ``key`` may see ``scan_id`` (:func:`visible_to`).

    Another key's scan is "not found" too, so that a key cannot learn which ids exist.
    """
    if session.execute(select(Scan.id).where(Scan.id == scan_id, visible_to(key))).first() is None:
        raise ScanNotFound(scan_id)


def visible_scans(session: Session, key: AuthorizedKey, *, limit: int = 200) -> list[dict]:
    """The scans ``key`` may see, newest first: id, name, status, counts and start time."""
    rows = session.execute(
        select(Scan.id, Scan.name, Scan.status, Scan.total, Scan.fake, Scan.real, Scan.errors, Scan.started_at)
        .where(visible_to(key)).order_by(Scan.id.desc()).limit(limit)
    ).mappings()
    return [dict(r) for r in rows]
