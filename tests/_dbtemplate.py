"""Migrated template databases, so that ``db_engine`` does not run every Alembic migration for every test.

A template is made once per test session and per content of ``db/migrations`` (a SHA-256 over its files):
when a migration file changes during a session, the next ``db_engine`` builds a new template from the files as
they are then. The template itself is made by the real ``dfscan.db.upgrade``; each test gets a copy
(SQLite: the file, copied; PostgreSQL: ``CREATE DATABASE ... TEMPLATE``) and ``db_engine`` still runs
``upgrade`` on it, a no-op at head. Tests of the migrations themselves take that copy down and up again
with the real ``downgrade``/``upgrade``; tests handed ``sqlite_url``/``pg_url``/``db_url`` alone still get
empty databases.

PostgreSQL templates are named ``dfscan_tmpl_<key>_<pid>``: parallel sessions on the shared server never
share one (a template must have no connections while it is copied), and a session drops its own at the end
(``drop_pg_templates``) and those of sessions that died (their pid is gone).

A test's PostgreSQL database is dropped by one background thread (``drop_later``) while the next test runs:
``DROP DATABASE`` is mostly the server's disk work. ``finish_drops`` waits for every pending drop.
"""

from __future__ import annotations

import hashlib
import atexit
import os
import queue
import re
import shutil
import tempfile
import threading
from pathlib import Path

import psycopg

from dfscan.db import make_engine, upgrade
from dfscan.db.migrate import MIGRATIONS_DIR

__all__ = ["copy_sqlite_template", "drop_later", "drop_pg_templates", "finish_drops", "migrations_key",
           "pg_template"]

_TEMPLATE_RE = re.compile(r"^dfscan_tmpl_([0-9a-f]{16})_(\d+)$")
_lock = threading.Lock()
_sqlite: dict[str, Path] = {}  # key -> migrated SQLite file
_pg: dict[tuple[str, str], str] = {}  # (user, key) -> template database name
_sqlite_dir: Path | None = None


def migrations_key() -> str:
    """A digest of every file under ``db/migrations`` (names and bytes), cheap enough to take per test."""
    digest = hashlib.sha256()
    for path in sorted(p for p in MIGRATIONS_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(MIGRATIONS_DIR)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _migrate(url: str) -> None:
    engine = make_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def copy_sqlite_template(target: Path) -> None:
    """Make ``target`` (which must not exist) a copy of a SQLite database migrated to head."""
    global _sqlite_dir
    key = migrations_key()
    with _lock:
        template = _sqlite.get(key)
        if template is None:
            if _sqlite_dir is None:
                _sqlite_dir = Path(tempfile.mkdtemp(prefix="dfscan-sqlite-templates-"))
            template = _sqlite_dir / f"{key}.db"
            _migrate(f"sqlite:///{template}")
            # The last connection closed checkpoints the WAL into the file; a copy of the file alone is whole.
            leftovers = [p for p in (template.with_name(template.name + s) for s in ("-wal", "-journal")) if p.exists()]
            assert not leftovers, leftovers
            _sqlite[key] = template
    shutil.copyfile(template, target)


def _admin(user: str, host: str, port: int, dbname: str) -> psycopg.Connection:
    return psycopg.connect(host=host, port=port, user=user, dbname=dbname, autocommit=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pg_template(user: str, host: str, port: int, admin_db: str) -> str:
    """Name of a template database migrated to head with the migration files as they are now."""
    key = migrations_key()
    with _lock:
        name = _pg.get((user, key))
        if name is not None:
            return name
        name = f"dfscan_tmpl_{key}_{os.getpid()}"
        with _admin(user, host, port, admin_db) as conn:
            # Those of sessions that died, and this session's own of older migration files.
            for (datname,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'dfscan_tmpl_%'"):
                m = _TEMPLATE_RE.match(datname)
                if m and (not _alive(int(m.group(2))) or int(m.group(2)) == os.getpid()):
                    conn.execute(f'DROP DATABASE IF EXISTS "{datname}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            _migrate(f"postgresql+psycopg://{user}@{host}:{port}/{name}")
        except BaseException:
            with _admin(user, host, port, admin_db) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            raise
        for old in [k for k in _pg if k[0] == user]:
            del _pg[old]
        _pg[(user, key)] = name
        return name


def drop_pg_templates(host: str, port: int, admin_db: str) -> None:
    """Drop this session's PostgreSQL templates (at the end of the session)."""
    with _lock:
        for (user, _key), name in list(_pg.items()):
            try:
                with _admin(user, host, port, admin_db) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except psycopg.Error:
                pass  # the server went away: nothing left to clean
        _pg.clear()
        if _sqlite_dir is not None:
            shutil.rmtree(_sqlite_dir, ignore_errors=True)
        _sqlite.clear()


# --- dropping test databases in the background -------------------------------------------------------------

_drops: "queue.Queue[tuple[str, str, int, str, str] | None]" = queue.Queue()
_dropper: threading.Thread | None = None
_drop_errors: list[str] = []


def _drop_loop() -> None:
    while (job := _drops.get()) is not None:
        user, host, port, admin_db, name = job
        try:
            with _admin(user, host, port, admin_db) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg.Error as exc:
            _drop_errors.append(f"{name}: {exc}")
        finally:
            _drops.task_done()


def drop_later(user: str, host: str, port: int, admin_db: str, name: str) -> None:
    """Drop database ``name`` (WITH FORCE) in the background thread."""
    global _dropper
    with _lock:
        if _dropper is None or not _dropper.is_alive():
            _dropper = threading.Thread(target=_drop_loop, name="dfscan-test-db-drops", daemon=True)
            _dropper.start()
    _drops.put((user, host, port, admin_db, name))


def finish_drops() -> list[str]:
    """Wait until every database handed to ``drop_later`` is dropped; the drops that failed, and why."""
    if _dropper is not None and _dropper.is_alive():
        _drops.join()
    errors, _drop_errors[:] = list(_drop_errors), []
    return errors


atexit.register(finish_drops)
