"""Bearer-token checks without a database write per request.

A valid key is remembered for ``ttl_s`` (so a revoked key stops working within
that time) and its requests are counted in memory and added to its row every
``flush_s``, and once more at shutdown.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from dfscan.db import utcnow
from dfscan.db.api_keys import AuthorizedKey, authenticate, hash_key
from dfscan.db.models import ApiKey

__all__ = ["KeyCache"]


class KeyCache:
    def __init__(self, sessions: sessionmaker[Session], *, ttl_s: float = 1.0, flush_s: float = 1.0) -> None:
        self.sessions = sessions
        self.ttl_s = ttl_s
        self.flush_s = flush_s
        self._known: dict[str, tuple[AuthorizedKey, float]] = {}
        self._counts: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="key-counts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.flush()

    def cached(self, token: str) -> AuthorizedKey | None:
        """The remembered answer for a valid token (counting the request), or ``None``: then call :meth:`check`."""
        digest = hash_key(token)
        with self._lock:
            hit = self._known.get(digest)
            if hit is not None and time.monotonic() - hit[1] < self.ttl_s:
                self._counts[hit[0].id] += 1
                return hit[0]
        return None

    def check(self, token: str) -> AuthorizedKey | None:
        """The key (id, signing secret, role) of a valid token, counting the request; ``None`` for any other.

        May query."""
        hit = self.cached(token)
        if hit is not None:
            return hit
        digest = hash_key(token)
        now = time.monotonic()
        with self.sessions.begin() as session:
            found = authenticate(session, token)  # counts this request itself
        with self._lock:
            if found is None:
                self._known.pop(digest, None)
                return None
            self._known[digest] = (found, now)
        return found

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, Counter()
        if not counts:
            return
        try:
            with self.sessions.begin() as session:
                for key_id, n in counts.items():
                    session.execute(update(ApiKey).where(ApiKey.id == key_id)
                                    .values(requests=ApiKey.requests + n, last_used_at=utcnow()))
        except Exception:
            with self._lock:
                self._counts.update(counts)  # kept for the next flush
            raise

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_s):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the counts wait for the next flush
                pass
