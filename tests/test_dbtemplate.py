"""``db_engine``'s template databases (tests/_dbtemplate.py): the copy a test gets is what running every
migration gives, and a change to any migration file makes a new template."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from dfscan import db
from tests import _dbtemplate
from tests.conftest import throwaway_pg_database

PG_SCHEMA = {
    "columns": """SELECT table_name, column_name, data_type, is_nullable, column_default
                  FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2""",
    "constraints": """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
                      FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2""",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2",
    "views": "SELECT viewname, definition FROM pg_views WHERE schemaname = 'public' ORDER BY 1",
    "functions": """SELECT proname, pg_get_functiondef(oid) FROM pg_proc
                    WHERE pronamespace = 'public'::regnamespace ORDER BY 1""",
    "triggers": "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1",
    "version": "SELECT version_num FROM alembic_version",
}
SQLITE_SCHEMA = {
    "objects": "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name",
    "version": "SELECT version_num FROM alembic_version",
    "journal": "PRAGMA journal_mode",
}


def _lines(sql: str | None) -> tuple[str, ...] | None:
    """A CREATE statement as its sorted lines: SQLite's batch migrations (alembic copies a table to alter
    it) write a table's constraints in an order that differs from one run of the same migrations to the next."""
    return None if sql is None else tuple(sorted(line.strip().rstrip(",") for line in sql.splitlines()))


def schema(engine: Engine) -> dict[str, list[tuple]]:
    queries = PG_SCHEMA if engine.dialect.name == "postgresql" else SQLITE_SCHEMA
    with engine.connect() as conn:
        found = {name: [tuple(r) for r in conn.execute(text(sql))] for name, sql in queries.items()}
    if engine.dialect.name == "sqlite":
        found["objects"] = [(kind, name, table, _lines(sql)) for kind, name, table, sql in found["objects"]]
    return found


def migrated_from_scratch(url: str) -> dict[str, list[tuple]]:
    engine = db.make_engine(url)
    try:
        db.upgrade(engine)
        return schema(engine)
    finally:
        engine.dispose()


def test_a_copy_of_the_template_is_a_database_migrated_from_scratch(db_engine: Engine, tmp_path: Path) -> None:
    copied = schema(db_engine)
    assert copied["version"] and len(copied[next(iter(copied))]) > 20  # a whole schema, at a revision
    if db_engine.dialect.name == "postgresql":
        with throwaway_pg_database() as url:
            fresh = migrated_from_scratch(url)
    else:
        fresh = migrated_from_scratch(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert copied == fresh


def test_the_key_follows_every_migration_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(_dbtemplate.MIGRATIONS_DIR, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(_dbtemplate, "MIGRATIONS_DIR", migrations)
    first = _dbtemplate.migrations_key()
    assert _dbtemplate.migrations_key() == first
    (migrations / "versions" / "__pycache__").mkdir(exist_ok=True)
    (migrations / "versions" / "__pycache__" / "x.pyc").write_bytes(b"compiled")
    assert _dbtemplate.migrations_key() == first  # bytecode is not a migration

    edited = sorted((migrations / "versions").glob("*.py"))[-1]
    edited.write_text(edited.read_text() + "\n# edited\n")
    second = _dbtemplate.migrations_key()
    assert second != first
    (migrations / "versions" / "0099_next.py").write_text('revision = "0099"\n')
    third = _dbtemplate.migrations_key()
    assert third not in (first, second)
    (migrations / "env.py").write_text((migrations / "env.py").read_text() + "\n")
    assert _dbtemplate.migrations_key() not in (first, second, third)


def test_a_new_key_makes_a_new_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = iter(["0" * 16, "0" * 16, "1" * 16])
    monkeypatch.setattr(_dbtemplate, "migrations_key", lambda: next(keys))
    monkeypatch.setattr(_dbtemplate, "_sqlite", {})
    made = []
    real_migrate = _dbtemplate._migrate
    monkeypatch.setattr(_dbtemplate, "_migrate", lambda url: (made.append(url), real_migrate(url)))
    for name in ("a.db", "b.db", "c.db"):
        _dbtemplate.copy_sqlite_template(tmp_path / name)
    assert [Path(u).name for u in made] == ["0" * 16 + ".db", "1" * 16 + ".db"]  # b.db reused a's template
    assert all(migrated_from_scratch(f"sqlite:///{tmp_path / n}")["version"] for n in ("a.db", "b.db", "c.db"))
