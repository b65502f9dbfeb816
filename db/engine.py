"""Engines and sessions: one engine per process, one session per unit of work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from dfscan.core.redact import mask_text, mask_url

from .errors import DatabaseError, DatabaseURLError

__all__ = ["make_engine", "session_factory"]

# Accepted driver names and the driver each one runs on. psycopg 3 is the only
# PostgreSQL driver installed, so a bare ``postgresql://`` is pointed at it.
_DRIVERS: dict[str, str] = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite+pysqlite",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}

SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 10


def _parse(url: str) -> URL:
    """Parse and normalise ``url``, or raise :class:`DatabaseURLError`."""
    if not isinstance(url, str) or not url.strip():
        raise DatabaseURLError("empty database URL (expected e.g. sqlite:///dfscan.db)")
    try:
        parsed = make_url(url.strip())
    except (ArgumentError, ValueError) as exc:
        raise DatabaseURLError(mask_text(f"cannot parse database URL {mask_url(url)!r}: {exc}")) from None
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        known = ", ".join(f"{name}://" for name in _DRIVERS)
        raise DatabaseURLError(
            f"unsupported database driver {parsed.drivername!r} in "
            f"{mask_url(parsed.render_as_string(hide_password=False))!r}; known: {known}"
        )
    return parsed.set(drivername=driver)


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL, or None for in-memory and URI forms."""
    database = url.database or ""
    if database in ("", ":memory:") or str(url.query.get("uri", "")).lower() in ("1", "true"):
        return None
    return Path(database)


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Runs on every new DBAPI connection, outside any transaction (PRAGMA
    # foreign_keys is a no-op inside one). busy_timeout goes first so that the
    # switch to WAL waits for other connections instead of failing.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


# What dfscan's PostgreSQL sessions set on connecting.  JIT off: PostgreSQL compiles the expressions of a statement
# it estimates costly (jit_above_cost), which dfscan's reads of a whole scan are, and the compiling cost more than
# it saved on every one measured: 0.3-0.4 s of the 1.8-2.3 s of `dfscan results` for a 1M-row scan, nothing
# on the others (docs/benchmarks.md, "Queries at 100M rows").
PG_SESSION_SETTINGS = ("SET jit = off",)


def _set_pg_session(dbapi_connection: Any, _record: Any) -> None:
    # Runs on every new DBAPI connection; committed, so that it holds for the session (a SET in a transaction
    # that rolls back is undone).
    with dbapi_connection.cursor() as cursor:
        for statement in PG_SESSION_SETTINGS:
            cursor.execute(statement)
    dbapi_connection.commit()


def make_engine(url: str) -> Engine:
    """Create the process's engine for ``url`` (SQLite file or PostgreSQL via psycopg 3).

    Not cached: callers create one lazily and keep it for the life of the process.
    """
    parsed = _parse(url)
    try:
        if parsed.get_backend_name() == "sqlite":
            path = _sqlite_file(parsed)
            if path is not None:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise DatabaseError(f"cannot create directory for {path}: {exc}") from None
            engine = create_engine(
                parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
            )
            event.listen(engine, "connect", _set_sqlite_pragmas)
            return engine
        connect_args: dict[str, Any] = {}
        if "connect_timeout" not in parsed.query:
            connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
        engine = create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
        event.listen(engine, "connect", _set_pg_session)
        return engine
    except ArgumentError as exc:
        raise DatabaseURLError(mask_text(
            f"invalid database URL {mask_url(parsed.render_as_string(hide_password=False))!r}: {exc}"
        )) from None


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to ``engine``; objects stay readable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)
