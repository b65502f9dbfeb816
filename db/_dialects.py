"""What differs between SQLite and PostgreSQL statements here: the dialect's INSERT."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .errors import DatabaseError

__all__ = ["dialect_name", "insert_for"]

_INSERTS: dict[str, Callable[..., Any]] = {
    "sqlite": sqlite.insert,
    "postgresql": postgresql.insert,
}


def dialect_name(session: Session) -> str:
    return session.get_bind().dialect.name


def insert_for(session: Session) -> Callable[..., Any]:
    """``insert`` of the session's dialect, which has ``on_conflict_do_update``."""
    name = dialect_name(session)
    try:
        return _INSERTS[name]
    except KeyError:
        raise DatabaseError(f"unsupported dialect {name!r}; known: {', '.join(_INSERTS)}") from None
