"""Run the Alembic migrations shipped in ``db/migrations`` from Python."""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection

__all__ = ["downgrade", "lock_for_migration", "upgrade"]

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Arbitrary constant shared by every dfscan process: "dfscan" in ASCII.
_PG_LOCK_KEY = 0x646673636E
# Alembic installs its migration context in module globals: one run per process at a time.
_PROCESS_LOCK = threading.Lock()


def _config(connection: Connection) -> Config:
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def lock_for_migration(connection: Connection) -> None:
    """Serialise migrators: several workers starting at once must not race to create tables.

    PostgreSQL: a transaction-level advisory lock. SQLite: take the write lock
    up front (BEGIN IMMEDIATE), waiting up to the busy timeout; pysqlite then
    commits that transaction as its own.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    elif connection.dialect.name == "sqlite":
        dbapi_connection = connection.connection.dbapi_connection
        if dbapi_connection is not None and not dbapi_connection.in_transaction:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema of ``engine``'s database up to ``revision`` (a no-op when already there)."""
    with _PROCESS_LOCK, engine.begin() as connection:
        command.upgrade(_config(connection), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema back to ``revision`` (``"base"`` drops everything dfscan created)."""
    with _PROCESS_LOCK, engine.begin() as connection:
        command.downgrade(_config(connection), revision)
