"""Alembic environment for dfscan.

``db.upgrade`` passes its own connection in ``config.attributes["connection"]``;
the alembic CLI gets an engine for the URL from the environment instead.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from dfscan.db._env import url_from_env
from dfscan.db.engine import make_engine
from dfscan.db.migrate import lock_for_migration
from dfscan.db.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    lock_for_migration(connection)
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: later migrations rebuild tables in batch mode.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``)."""
    context.configure(
        url=url_from_env(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # Invoked by the alembic CLI: configure logging (never when embedded, where
    # the application owns logging) and open our own engine.
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    engine = make_engine(url_from_env())
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
