"""Browser sessions of the review page: a key typed once, then a cookie, with a CSRF token per session.

Sessions live in this process's memory (a restart signs everyone out). The cookie holds only a random token;
the server keeps the API key it stands for, and checks it again on every request through the same
:class:`KeyCache` as bearer requests, so a revoked key ends its sessions within the cache's lifetime.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from dfscan.db.api_keys import AuthorizedKey

__all__ = ["COOKIE", "CSRF_FIELD", "CSRF_HEADER", "Session", "SessionStore", "cookie_flags", "is_loopback_host"]

COOKIE = "dfscan_review"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


@dataclass(frozen=True)
class Session:
    token: str  # the API key, kept server-side only
    csrf: str
    expires: float  # time.monotonic()


class SessionStore:
    """Session id -> :class:`Session`; ids are 256-bit random, expired sessions are dropped as they are met."""

    def __init__(self, *, ttl_s: float = 8 * 3600.0, max_sessions: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, api_token: str) -> tuple[str, Session]:
        """A new session for a checked key: ``(session id, session)``."""
        sid = secrets.token_urlsafe(32)
        session = Session(api_token, secrets.token_urlsafe(32), time.monotonic() + self.ttl_s)
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                self._drop_expired()
                if len(self._sessions) >= self.max_sessions:  # the oldest goes
                    self._sessions.pop(next(iter(self._sessions)))
            self._sessions[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            session = self._sessions.get(sid)
            if session is not None and session.expires < time.monotonic():
                del self._sessions[sid]
                return None
            return session

    def close(self, sid: str | None) -> None:
        with self._lock:
            self._sessions.pop(sid or "", None)

    def _drop_expired(self) -> None:
        now = time.monotonic()
        for sid in [s for s, v in self._sessions.items() if v.expires < now]:
            del self._sessions[sid]


def csrf_ok(session: Session, sent: str | None) -> bool:
    """Whether ``sent`` is the session's CSRF token (compared in constant time)."""
    return bool(sent) and hmac.compare_digest(session.csrf.encode(), str(sent).encode())


def is_loopback_host(host: str | None) -> bool:
    return (host or "").lower() in LOOPBACK_HOSTS


def cookie_flags(host: str | None) -> dict:
    """The session cookie's attributes: HttpOnly, SameSite=Strict, and Secure unless the page is on loopback."""
    return {"httponly": True, "samesite": "strict", "secure": not is_loopback_host(host), "path": "/"}


def key_name(key: AuthorizedKey) -> str:
    """Who a decision is recorded as: the key's name (its id when it has none)."""
    return key.name or f"key {key.id}"
