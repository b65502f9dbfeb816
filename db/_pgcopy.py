"""PostgreSQL's ``COPY`` through the session's own psycopg 3 connection, with SQLAlchemy's error handling.

SQLAlchemy has no ``COPY``: it runs on the driver's connection, inside the
session's transaction.  A driver error there would escape SQLAlchemy's
translation (and :func:`dfscan.db.retry.is_transient` would not know a lost
connection from a bug), so it is translated here the same way, and a
connection that the error shows to be dead is invalidated rather than put back
in the pool.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

__all__ = ["UNIQUE_VIOLATION", "copy_rows"]

UNIQUE_VIOLATION = "23505"
_SAVEPOINT = "dfscan_copy"


def copy_rows(session: Session, copy_sql: str, rows: Iterable[Sequence[Any]], *, setup: str | None = None,
              savepoint: bool = False) -> None:
    """``COPY ... FROM STDIN`` of ``rows`` in the session's transaction, after ``setup`` (SQL without parameters).

    Values are adapted by psycopg (text format: tabs, newlines and backslashes
    inside values are escaped by the driver; None is NULL).  With
    ``savepoint``, a failed ``COPY`` is rolled back to a savepoint taken just
    before it, so the transaction goes on (the caller sees the error, e.g. a
    unique violation, and can write the rows another way).  The savepoint is
    not released (a round trip saved): the transaction's commit ends it, and a
    later one of the same name shadows it.  Errors are SQLAlchemy's
    (:class:`sqlalchemy.exc.IntegrityError` and so on).
    """
    connection = session.connection()
    dbapi = connection.connection.driver_connection
    dialect = connection.dialect
    errors = dialect.loaded_dbapi.Error
    statement = setup or copy_sql
    try:
        with dbapi.cursor() as cursor:
            if setup:
                cursor.execute(setup)
            statement = copy_sql
            if savepoint:
                cursor.execute(f"SAVEPOINT {_SAVEPOINT}")
            try:
                with cursor.copy(copy_sql) as copy:
                    write = copy.write_row
                    for row in rows:
                        write(row)
            except errors as exc:
                if not savepoint or dialect.is_disconnect(exc, dbapi, None):
                    raise
                cursor.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
                raise
    except errors as exc:
        lost = dialect.is_disconnect(exc, dbapi, None)
        if lost:
            connection.invalidate(exc)
        raise DBAPIError.instance(statement, None, exc, errors, connection_invalidated=lost,
                                  dialect=dialect) from exc
