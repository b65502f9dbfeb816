"""Retrying a unit of work across lost connections, server restarts, locks and serialization failures.

The one place in :mod:`dfscan.db` that commits is here: :func:`retry_db`
runs ``work`` (a whole transaction) and, when it fails in a way a later
attempt can get past (:func:`is_transient`), runs it again from the start.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from dfscan.core.errors import first_line

__all__ = ["is_transient", "retry_db"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """A failure that a later attempt can get past: lost connection, server restart, lock, serialization."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def retry_db(
    work: Callable[[], T],
    *,
    deadline_s: float,
    what: str = "database work",
    first_delay_s: float = 0.25,
    max_delay_s: float = 8.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``work`` (one whole transaction), retrying transient errors with exponential back-off.

    ``work`` must be safe to run again from the start: every write of a scan is
    an upsert or a set (never an increment that a lost COMMIT reply would
    double), except the attempt counter, where one extra count is harmless.
    The last error is re-raised once ``deadline_s`` has passed.
    """
    start = time.monotonic()
    delay = first_delay_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return work()
        except Exception as exc:  # noqa: BLE001 - filtered just below
            if not is_transient(exc):
                raise
            waited = time.monotonic() - start
            if waited >= deadline_s:
                raise
            pause = min(delay, max_delay_s, max(0.0, deadline_s - waited)) * random.uniform(0.8, 1.2)
            log.warning("%s failed (attempt %d, %s); retrying in %.1f s", what, attempt, _short(exc), pause)
            sleep(pause)
            delay *= 2


def _short(exc: BaseException) -> str:
    """``Type: first line`` of the driver's error (SQLAlchemy wraps it in ``exc.orig``)."""
    orig = getattr(exc, "orig", None) or exc
    return f"{type(orig).__name__}: {first_line(orig, None) if str(orig).strip() else ''}"[:200]
