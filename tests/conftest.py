"""Shared fixtures. Database fixtures give each test its own real database.

``db_engine`` starts from a copy of a migrated template (tests/_dbtemplate.py) instead of running every
migration per test; ``sqlite_url``, ``pg_url`` and ``db_url`` alone still hand out empty databases.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine

from dfscan.db import make_engine, upgrade
from tests import _dbtemplate

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_ADMIN_DB = "test"
PG_USERS = ("postgres", "root")


@functools.cache
def _pg_admin_user() -> tuple[str | None, str]:
    """A user that can create databases on the shared server, or None and why not."""
    reasons = []
    for user in PG_USERS:
        try:
            with psycopg.connect(
                host=PG_HOST, port=PG_PORT, user=user, dbname=PG_ADMIN_DB, connect_timeout=3
            ):
                return user, ""
        except psycopg.Error as exc:
            reasons.append(f"{user}: {str(exc).strip().splitlines()[0]}")
    return None, f"PostgreSQL at {PG_HOST}:{PG_PORT} unusable ({'; '.join(reasons)})"


def _pg_admin(user: str) -> psycopg.Connection:
    # CREATE/DROP DATABASE cannot run inside a transaction block.
    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=user, dbname=PG_ADMIN_DB, autocommit=True
    )


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file in this test's temporary directory (not created yet)."""
    return f"sqlite:///{tmp_path / 'dfscan.db'}"


@contextlib.contextmanager
def throwaway_pg_database(migrated: bool = False) -> Iterator[str]:
    """URL of a new database on the shared server, dropped (WITH FORCE) on exit; skips without a server.

    ``migrated``: a copy of a template already at ``upgrade head`` rather than an empty database.
    """
    user, reason = _pg_admin_user()
    if user is None:
        pytest.skip(reason)
    name = f"dfscan_test_{uuid.uuid4().hex[:12]}"
    template = _dbtemplate.pg_template(user, PG_HOST, PG_PORT, PG_ADMIN_DB) if migrated else None
    with _pg_admin(user) as conn:
        conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    try:
        yield f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        # In the background while the next test runs (the session's end waits for every drop).
        _dbtemplate.drop_later(user, PG_HOST, PG_PORT, PG_ADMIN_DB, name)


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A throwaway PostgreSQL database, dropped (WITH FORCE) after the test (in the background).

    Empty, unless the test also uses ``db_engine``, which would migrate this very database before the test
    runs: then it starts as a copy of the migrated template (the same schema, without running every migration).
    """
    with throwaway_pg_database(migrated="db_engine" in request.fixturenames) as url:
        yield url


@pytest.hookimpl(trylast=True)  # after -k/-m have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """When the fresh-venv install test will run, start its ~2-minute install now, beside the tests before it."""
    from tests import _install

    if not config.option.collectonly and any(item.nodeid == _install.TEST_ID for item in items):
        _install.start_in_background()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Wait for the test databases' drops, then drop this session's template databases."""
    failed = _dbtemplate.finish_drops()
    _dbtemplate.drop_pg_templates(PG_HOST, PG_PORT, PG_ADMIN_DB)
    if failed:
        print(f"\nwarning: {len(failed)} test database(s) not dropped: {failed[:3]}")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """An empty database of each supported kind (already migrated where the test also uses ``db_engine``)."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def db_engine(db_url: str) -> Iterator[Engine]:
    """An engine on a migrated (``upgrade head``) database of each kind.

    The database starts as a copy of a template migrated once per session and per content of the migration
    files; ``upgrade`` still runs (a no-op at head) and migration tests go down and up from there for real.
    """
    if db_url.startswith("sqlite:///"):
        path = Path(db_url.removeprefix("sqlite:///"))
        if not path.exists():
            _dbtemplate.copy_sqlite_template(path)
    engine = make_engine(db_url)
    upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def redis_server(tmp_path: Path):
    """A throwaway ``redis-server`` on a free port, for tests that restart or wipe their broker."""
    from tests._cluster import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()
