"""The two things that differ between SQLite and PostgreSQL statements here."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .errors import DatabaseError

__all__ = ["dialect_name", "insert_for", "max_rows_per_statement"]

_INSERTS: dict[str, Callable[..., Any]] = {
    "sqlite": sqlite.insert,
    "postgresql": postgresql.insert,
}
# Bound parameters one statement may carry: SQLITE_MAX_VARIABLE_NUMBER (999
# before SQLite 3.32) and PostgreSQL's 16-bit parameter count.
_MAX_PARAMS: dict[str, int] = {
    "sqlite": 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999,
    "postgresql": 65535,
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


def max_rows_per_statement(session: Session, params_per_row: int) -> int:
    return max(1, _MAX_PARAMS[dialect_name(session)] // params_per_row)
