"""Shared fixtures. Database fixtures give each test its own real database."""

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
def throwaway_pg_database() -> Iterator[str]:
    """URL of a new database on the shared server, dropped (WITH FORCE) on exit; skips without a server."""
    user, reason = _pg_admin_user()
    if user is None:
        pytest.skip(reason)
    name = f"dfscan_test_{uuid.uuid4().hex[:12]}"
    with _pg_admin(user) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with _pg_admin(user) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A throwaway PostgreSQL database, dropped (WITH FORCE) after the test."""
    with throwaway_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """An empty database of each supported kind."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def db_engine(db_url: str) -> Iterator[Engine]:
    """An engine on a migrated (``upgrade head``) database of each kind."""
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
