"""The database layer against real SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, inspect, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dfscan import db
import dfscan.db.results
from dfscan.db.models import Chunk, Result, Scan
from dfscan.db.paths import path_hash
from tests._awkward import AWKWARD_PATHS

CONTRACT_VIEW_COLUMNS = [
    "scan_id", "path", "status", "label", "p_fake", "confidence", "error", "model_sha256",
    "scanned_at", "faces", "faces_found", "kind", "frames", "duration_s", "notes",
    "content_hash", "verdict_source", "etag", "pdq", "pdq_quality", "matches", "synthetic_declared", "path_hash",
]  # fmt: skip
TABLES = {"models", "scans", "chunks", "results", "scan_workers", "result_faces", "result_frames"}
T0 = datetime(2025, 11, 25, 8, 0, 0, 123456, tzinfo=UTC)


def ok_row(path: str, p_fake: float, *, at: datetime = T0, size: int | None = 1000) -> db.ResultRow:
    label = "fake" if p_fake >= 0.5 else "real"
    return db.ResultRow(
        path=path, size=size, mtime=1_700_000_000.5, status="ok", label=label, p_fake=p_fake,
        confidence=max(p_fake, 1 - p_fake), error=None, error_code=None, scanned_at=at,
    )  # fmt: skip


def error_row(path: str, code: str | None, message: str = "boom") -> db.ResultRow:
    return db.ResultRow(
        path=path, size=None, mtime=None, status="error", label=None, p_fake=None,
        confidence=None, error=message, error_code=code, scanned_at=T0,
    )  # fmt: skip


@pytest.fixture
def session(db_engine: Engine) -> Iterator[Session]:
    with db.session_factory(db_engine)() as s:
        yield s


@pytest.fixture
def scan_ids(session: Session) -> tuple[int, int]:
    """(scan_id, model_id) of a running scan, committed."""
    model_id = db.get_or_create_model(
        session, sha256="a" * 64, name="resnet50", path="/models/r50.onnx", info={"input": 224}
    )
    scan_id = db.create_scan(
        session, name="nightly", roots=["/data"], model_id=model_id, threshold=0.5,
        settings={"runtime": "onnxruntime", "user": "ci", "argv": ["dfscan", "scan"]},
    )  # fmt: skip
    session.commit()
    return scan_id, model_id


def result_rows(session: Session, scan_id: int) -> list[tuple]:
    return session.execute(
        select(Result.path, Result.status, Result.label, Result.p_fake, Result.error_code)
        .where(Result.scan_id == scan_id)
        .order_by(Result.path)
    ).all()


# --- engines and URLs -------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "",
        "   ",
        "not a url",
        "mysql://user@localhost/dfscan",
        "postgresql+psycopg2://user@localhost/dfscan",
        "sqlite+nosuchdriver:///x.db",
        "postgresql+psycopg://user@localhost:notaport/dfscan",
    ],
)
def test_bad_urls_raise_database_url_error(url: str) -> None:
    with pytest.raises(db.DatabaseURLError) as info:
        db.make_engine(url)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, db.DatabaseError)


def test_url_error_hides_password() -> None:
    with pytest.raises(db.DatabaseURLError) as info:
        db.make_engine("mysql://user:s3cret@localhost/dfscan")
    assert "s3cret" not in str(info.value)


def test_plain_postgresql_url_uses_psycopg3() -> None:
    engine = db.make_engine("postgresql://user@localhost/dfscan")  # connects lazily
    assert engine.dialect.driver == "psycopg"
    assert engine.pool._pre_ping  # type: ignore[attr-defined]


def test_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DFSCAN_DB_URL", raising=False)
    assert db.url_from_env() == "sqlite:///dfscan.db"
    monkeypatch.setenv("DFSCAN_DB_URL", "postgresql+psycopg://x@h/d")
    assert db.url_from_env() == "postgresql+psycopg://x@h/d"


def test_sqlite_engine_settings(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "dfscan.db"
    engine = db.make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            pragma = lambda name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
            assert pragma("journal_mode") == "wal"
            assert pragma("busy_timeout") == 30000
            assert pragma("foreign_keys") == 1
            assert pragma("synchronous") == 1  # NORMAL
        assert path.exists()
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_sessions_run_without_jit(pg_url: str) -> None:
    """Every session of the product's engine has JIT off (db.engine.PG_SESSION_SETTINGS), from its first statement
    and after a rollback: the setting is committed when the connection is made, not part of a transaction.
    (The server's own default is on unless its configuration says otherwise.)"""
    engine = db.make_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW jit").scalar() == "off"
            conn.rollback()
            assert conn.exec_driver_sql("SHOW jit").scalar() == "off"
        with db.session_factory(engine)() as s:
            assert s.execute(text("SHOW jit")).scalar() == "off"
    finally:
        engine.dispose()


def test_sqlite_enforces_foreign_keys(sqlite_url: str) -> None:
    engine = db.make_engine(sqlite_url)
    db.upgrade(engine)
    with db.session_factory(engine)() as s, pytest.raises(IntegrityError):
        db.add_chunk(s, scan_id=999, seq=0, paths=["/x"])
    engine.dispose()


# --- migrations -------------------------------------------------------------------


def test_migration_creates_contract_schema(db_engine: Engine) -> None:
    insp = inspect(db_engine)
    assert TABLES <= set(insp.get_table_names())
    assert sorted(insp.get_view_names()) == ["scan_faces", "scan_frames", "scan_matches", "scan_provenance",
                                            "scan_results", "scan_reviews"]
    assert [c["name"] for c in insp.get_columns("scan_results")] == CONTRACT_VIEW_COLUMNS
    assert [c["name"] for c in insp.get_columns("scan_faces")] == [
        "scan_id", "path", "face_index", "x", "y", "w", "h", "detector_score", "p_fake", "label", "path_hash"]
    assert [c["name"] for c in insp.get_columns("scan_frames")] == [
        "scan_id", "path", "track", "frame_index", "timestamp_s", "x", "y", "w", "h", "p_fake", "track_p_fake", "pdq",
        "path_hash"]
    assert [c["name"] for c in insp.get_columns("scan_matches")] == [
        "scan_id", "path", "bank", "ref", "label", "distance", "frame", "path_hash"]

    # Migration 0016: keyed by (scan_id, path_hash), no foreign keys, no index on path (docs/sql.md).
    assert insp.get_pk_constraint("results")["constrained_columns"] == ["scan_id", "path_hash"]
    assert insp.get_unique_constraints("results") == []
    assert {u["name"] for u in insp.get_unique_constraints("chunks")} == {"uq_chunks_scan_id_seq"}
    assert {u["name"] for u in insp.get_unique_constraints("models")} == {"uq_models_sha256"}
    checks = {c["name"] for c in insp.get_check_constraints("results")}
    assert checks == {"ck_results_status", "ck_results_label", "ck_results_ok_p_fake", "ck_results_kind",
                      "ck_results_verdict_source"}
    indexes = {i["name"]: i["column_names"] for i in insp.get_indexes("results")}
    assert indexes["ix_results_scan_id_status"] == ["scan_id", "status"]
    assert indexes["ix_results_scan_id_p_fake"] == ["scan_id", "p_fake"]
    assert indexes["ix_results_content_hash"] == ["content_hash"]
    assert set(indexes) == {"ix_results_scan_id_status", "ix_results_scan_id_p_fake", "ix_results_content_hash"}
    assert insp.get_foreign_keys("results") == []
    for table in ("result_faces", "result_frames", "result_matches", "match_notices", "result_provenance",
                  "explanations"):
        keyed = [u["column_names"] for u in insp.get_unique_constraints(table)] + [
            i["column_names"] for i in insp.get_indexes(table) if "scan_id" in i["column_names"]]
        assert keyed and all(cols[:2] == ["scan_id", "path_hash"] for cols in keyed), (table, keyed)
    columns = {c["name"] for c in insp.get_columns("results")}
    assert columns == {
        "path_hash", "scan_id", "model_id", "path", "size", "mtime", "status", "label", "p_fake",
        "confidence", "error", "error_code", "scanned_at", "faces", "faces_found", "kind", "frames", "duration_s",
        "notes", "content_hash", "verdict_source", "etag", "pdq", "pdq_quality", "matches", "synthetic_declared",
    }  # fmt: skip
    for table in ("models", "scans", "chunks"):
        assert {c["name"] for c in insp.get_columns(table)} == set(
            db.models.Base.metadata.tables[table].c.keys()
        )


def test_migration_matches_models(db_engine: Engine) -> None:
    """Autogenerate finds nothing to do: the hand-written migration and the models agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with db_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, db.models.Base.metadata)
    assert diff == []


def _head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from dfscan.db.migrate import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


def test_upgrade_twice_is_a_noop(db_engine: Engine, scan_ids: tuple[int, int]) -> None:
    db.upgrade(db_engine)
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [
            _head_revision()
        ]
        assert conn.execute(text("SELECT count(*) FROM scans")).scalar() == 1


def test_downgrade_to_base_removes_everything(db_engine: Engine) -> None:
    db.downgrade(db_engine, "base")
    insp = inspect(db_engine)
    # Only Alembic's own bookkeeping table stays, empty.
    assert set(insp.get_table_names()) == {"alembic_version"}
    assert insp.get_view_names() == []
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 0
    db.upgrade(db_engine)  # and back up again
    assert TABLES <= set(inspect(db_engine).get_table_names())


def test_migration_0012_down_and_up_keeps_rows(db_engine: Engine) -> None:
    """Downgrade to 0011 drops results.etag and the view's etag and keeps the rows; upgrading gives NULL etags."""
    with db.session_factory(db_engine).begin() as session:
        model_id = db.get_or_create_model(session, sha256="a" * 64, name="m", path="/m", info={})
        scan_id = db.create_scan(session, name="s", roots=[], model_id=model_id, threshold=0.5, settings={})
        db.write_batch(session, scan_id=scan_id, model_id=model_id, rows=[
            db.ResultRow("s3://b/x.jpg", 1, 1.0, "ok", "real", 0.1, 0.9, None, None, T0, etag="9b2cf535f27731c9"),
            db.ResultRow("/y.jpg", 2, 2.0, "ok", "fake", 0.9, 0.9, None, None, T0)])
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT path, etag FROM scan_results ORDER BY path")).all() == [
            ("/y.jpg", None), ("s3://b/x.jpg", "9b2cf535f27731c9")]
    db.downgrade(db_engine, "0011")
    insp = inspect(db_engine)
    assert "etag" not in {c["name"] for c in insp.get_columns("results")}
    assert [c["name"] for c in insp.get_columns("scan_results")] == CONTRACT_VIEW_COLUMNS[:CONTRACT_VIEW_COLUMNS.index("etag")]
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT path, label FROM scan_results ORDER BY path")).all() == [
            ("/y.jpg", "fake"), ("s3://b/x.jpg", "real")]
    db.upgrade(db_engine)
    assert [c["name"] for c in inspect(db_engine).get_columns("scan_results")] == CONTRACT_VIEW_COLUMNS
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT path, etag FROM scan_results ORDER BY path")).all() == [
            ("/y.jpg", None), ("s3://b/x.jpg", None)]
        assert conn.execute(text("SELECT path, size FROM results ORDER BY path")).all() == [
            ("/y.jpg", 2), ("s3://b/x.jpg", 1)]


def test_concurrent_upgrades_do_not_race(db_url: str) -> None:
    """Workers that start together all auto-migrate; the lock makes the losers wait."""
    code = "import sys; from dfscan import db; db.upgrade(db.make_engine(sys.argv[1]))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, db_url], stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    stderrs = [p.communicate(timeout=120)[1] for p in procs]
    assert [err for p, err in zip(procs, stderrs, strict=True) if p.returncode] == []
    engine = db.make_engine(db_url)
    assert TABLES <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_upgrade_from_threads(db_url: str) -> None:
    engines = [db.make_engine(db_url) for _ in range(3)]
    errors: list[BaseException] = []

    def migrate(engine: Engine) -> None:
        try:
            db.upgrade(engine)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for engine in engines:
        engine.dispose()
    assert errors == []


# --- writes -----------------------------------------------------------------------


def test_get_or_create_model_is_idempotent(session: Session) -> None:
    first = db.get_or_create_model(session, sha256="b" * 64, name="m", path="/m", info={"k": 1})
    again = db.get_or_create_model(session, sha256="b" * 64, name="other", path="/o", info={})
    other = db.get_or_create_model(session, sha256="c" * 64, name="m2", path="/m2", info={})
    assert first == again != other


def test_add_chunk(session: Session, scan_ids: tuple[int, int]) -> None:
    scan_id, _ = scan_ids
    paths = ["/data/1.jpg", "/data/2.jpg"]
    chunk_id = db.add_chunk(session, scan_id=scan_id, seq=0, paths=paths)
    chunk = session.get(Chunk, chunk_id)
    assert chunk is not None
    assert (chunk.status, chunk.attempts, chunk.n_paths, chunk.paths) == ("queued", 0, 2, paths)
    assert db.add_chunk(session, scan_id=scan_id, seq=0, paths=paths) == chunk_id
    with pytest.raises(db.DatabaseError):
        db.add_chunk(session, scan_id=scan_id, seq=0, paths=["/data/other.jpg"])


def test_write_batch_twice_gives_same_rows(session: Session, scan_ids: tuple[int, int]) -> None:
    scan_id, model_id = scan_ids
    batch = [ok_row(f"/data/{i:02}.jpg", i / 64) for i in range(64)]
    db.write_batch(session, scan_id=scan_id, model_id=model_id, rows=batch)
    session.commit()
    first = result_rows(session, scan_id)
    db.write_batch(session, scan_id=scan_id, model_id=model_id, rows=batch)
    session.commit()
    assert result_rows(session, scan_id) == first
    assert len(first) == 64


def test_write_batch_updates_existing_path(session: Session, scan_ids: tuple[int, int]) -> None:
    scan_id, model_id = scan_ids
    db.write_batch(session, scan_id=scan_id, model_id=model_id, rows=[error_row("/a", "io")])
    db.write_batch(session, scan_id=scan_id, model_id=model_id, rows=[ok_row("/a", 0.9)])
    session.commit()
    assert result_rows(session, scan_id) == [("/a", "ok", "fake", 0.9, None)]


def test_write_batch_is_one_statement(
    session: Session, scan_ids: tuple[int, int], db_engine: Engine
) -> None:
    scan_id, model_id = scan_ids
    statements: list[str] = []

    def record(*args: object) -> None:  # before_cursor_execute(conn, cursor, statement, ...)
        statements.append(str(args[2]))

    event.listen(db_engine, "before_cursor_execute", record)
    try:
        rows = [ok_row(f"/one/{i:02}.jpg", 0.5) for i in range(64)]
        db.write_batch(session, scan_id=scan_id, model_id=model_id, rows=rows)
        first = list(statements)
        statements.clear()
        db.write_batch(session, scan_id=scan_id, model_id=model_id, rows=rows)  # the same paths again
    finally:
        event.remove(db_engine, "before_cursor_execute", record)
    if db_engine.dialect.name == "postgresql":
        # New paths: one COPY on the driver's connection, nothing else; paths already there: COPY into
        # the staging table, then one INSERT ... SELECT ... ON CONFLICT.
        assert first == []
        assert len(statements) == 1 and "ON CONFLICT" in statements[0] and "SELECT" in statements[0]
    else:
        assert len(first) == 1 and "ON CONFLICT" in first[0]
        assert len(statements) == 1 and "ON CONFLICT" in statements[0]
    session.commit()
    assert len(result_rows(session, scan_id)) == 64


def test_write_batch_same_path_twice_last_wins(
    session: Session, scan_ids: tuple[int, int]
) -> None:
    scan_id, model_id = scan_ids
    rows = [ok_row("/dup.jpg", 0.1), ok_row("/other.jpg", 0.2), ok_row("/dup.jpg", 0.8)]
    db.write_batch(session, scan_id=scan_id, model_id=model_id, rows=rows)
    session.commit()
    assert result_rows(session, scan_id) == [
        ("/dup.jpg", "ok", "fake", 0.8, None),
        ("/other.jpg", "ok", "real", 0.2, None),
    ]


def test_write_batch_empty_is_noop(session: Session, scan_ids: tuple[int, int]) -> None:
    db.write_batch(session, scan_id=scan_ids[0], model_id=scan_ids[1], rows=[])
    assert result_rows(session, scan_ids[0]) == []


def test_write_batch_does_not_commit(session: Session, scan_ids: tuple[int, int]) -> None:
    scan_id, model_id = scan_ids
    db.write_batch(session, scan_id=scan_id, model_id=model_id, rows=[ok_row("/a", 0.3)])
    session.rollback()
    assert result_rows(session, scan_id) == []


def test_write_batch_far_larger_than_a_statement_can_bind(session: Session, scan_ids: tuple[int, int]) -> None:
    # 12 columns x 6000 rows is past SQLite's 32766 and near PostgreSQL's 65535
    # bound parameters: the batch goes as one executemany, not one VALUES list.
    scan_id, model_id = scan_ids
    rows = [ok_row(f"/big/{i:05}.jpg", 0.25) for i in range(6000)]
    db.write_batch(session, scan_id=scan_id, model_id=model_id, rows=rows)
    session.commit()
    assert len(result_rows(session, scan_id)) == 6000


def test_ok_and_error_rows_round_trip(session: Session, scan_ids: tuple[int, int]) -> None:
    scan_id, model_id = scan_ids
    aware_elsewhere = T0.astimezone(timezone(timedelta(hours=5, minutes=30)))
    rows = [
        ok_row("/ok.jpg", 0.75, at=aware_elsewhere, size=5_000_000_000),
        error_row("/bad.jpg", "decode"),
    ]
    db.write_batch(session, scan_id=scan_id, model_id=model_id, rows=rows)
    session.commit()
    stored = {r.path: r for r in session.scalars(select(Result).where(Result.scan_id == scan_id))}
    good, bad = stored["/ok.jpg"], stored["/bad.jpg"]
    assert (good.status, good.label, good.p_fake, good.confidence) == ("ok", "fake", 0.75, 0.75)
    assert good.size == 5_000_000_000 and good.mtime == 1_700_000_000.5
    assert good.scanned_at == T0 and good.scanned_at.tzinfo is not None
    assert good.scanned_at.utcoffset() == timedelta(0)
    assert (bad.status, bad.label, bad.p_fake, bad.error, bad.error_code) == (
        "error", None, None, "boom", "decode",
    )  # fmt: skip
    assert good.model_id == model_id


def test_awkward_paths_round_trip(session: Session, scan_ids: tuple[int, int]) -> None:
    scan_id, model_id = scan_ids
    rows = [ok_row(p, 0.6) for p in AWKWARD_PATHS]
    db.write_batch(session, scan_id=scan_id, model_id=model_id, rows=rows)
    chunk_id = db.add_chunk(session, scan_id=scan_id, seq=0, paths=AWKWARD_PATHS)
    session.commit()
    assert {r["path"] for r in db.iter_results(session, scan_id=scan_id)} == set(AWKWARD_PATHS)
    assert db.existing_paths(session, scan_id, AWKWARD_PATHS + ["/absent"]) == set(AWKWARD_PATHS)
    assert session.get(Chunk, chunk_id).paths == AWKWARD_PATHS  # type: ignore[union-attr]


def test_result_row_validates() -> None:
    with pytest.raises(ValueError, match="status"):
        db.ResultRow("/p", None, None, "maybe", None, None, None, None, None, T0)
    with pytest.raises(ValueError, match="label"):
        db.ResultRow("/p", None, None, "ok", "REAL", 0.1, 0.9, None, None, T0)
    with pytest.raises(ValueError, match="aware"):
        db.ResultRow("/p", None, None, "ok", "real", 0.1, 0.9, None, None, datetime(2025, 1, 1))


@pytest.mark.parametrize(("status", "label"), [("maybe", None), ("ok", "unsure"), ("OK", "real")])
def test_check_constraints_reject_bad_rows(
    session: Session, scan_ids: tuple[int, int], status: str, label: str | None
) -> None:
    scan_id, model_id = scan_ids
    with pytest.raises(IntegrityError):
        session.execute(
            insert(Result).values(
                scan_id=scan_id, model_id=model_id, path="/x", path_hash=path_hash("/x"), status=status,
                label=label, scanned_at=T0,
            )  # fmt: skip
        )
        session.flush()
    session.rollback()
    # The same row with a valid status and label is stored: the refusal above was the check's.
    session.execute(insert(Result).values(scan_id=scan_id, model_id=model_id, path="/x", path_hash=path_hash("/x"),
                                          status="error", label=None, scanned_at=T0))
    session.flush()
    session.rollback()


def test_chunk_lifecycle(session: Session, scan_ids: tuple[int, int]) -> None:
    scan_id, model_id = scan_ids
    chunk_id = db.add_chunk(session, scan_id=scan_id, seq=3, paths=["/a", "/b", "/c"])
    assert db.start_attempt(session, chunk_id).attempts == 1
    assert db.start_attempt(session, chunk_id).attempts == 2
    db.close_lost_chunk(session, chunk_id=chunk_id, scan_id=scan_id, model_id=model_id, paths=["/a", "/b", "/c"],
                        reason="worker lost")
    session.commit()
    chunk = session.get(Chunk, chunk_id)
    assert chunk is not None and (chunk.status, chunk.last_error) == ("failed", "worker lost")

    for _ in range(2):  # a redelivered chunk finishes twice: counts are set, not added
        db.finish_chunk(session, chunk_id=chunk_id, ok=2, fake=1, real=1, errors=1)
        session.commit()
    session.refresh(chunk)
    assert (chunk.status, chunk.ok, chunk.fake, chunk.real, chunk.errors) == ("done", 2, 1, 1, 1)
    assert chunk.attempts == 2 and chunk.last_error is None
    assert chunk.finished_at is not None and chunk.finished_at.tzinfo is not None


def test_missing_chunk_and_scan_raise(session: Session) -> None:
    with pytest.raises(db.ChunkNotFound):
        db.start_attempt(session, 12345)
    with pytest.raises(db.ChunkNotFound):
        db.finish_chunk(session, chunk_id=12345, ok=0, fake=0, real=0, errors=0)
    with pytest.raises(db.ScanNotFound):
        db.finish_scan(session, scan_id=12345, status="completed")
    with pytest.raises(db.ScanNotFound):
        db.scan_summary(session, 12345)


def test_finish_scan_stores_chunk_totals(session: Session, scan_ids: tuple[int, int]) -> None:
    scan_id, _ = scan_ids
    c0 = db.add_chunk(session, scan_id=scan_id, seq=0, paths=["/a", "/b", "/c"])
    c1 = db.add_chunk(session, scan_id=scan_id, seq=1, paths=["/d", "/e"])
    db.finish_chunk(session, chunk_id=c0, ok=3, fake=1, real=2, errors=0)
    db.finish_chunk(session, chunk_id=c1, ok=1, fake=0, real=1, errors=1)
    db.finish_scan(session, scan_id=scan_id, status="completed")
    session.commit()
    scan = session.get(Scan, scan_id)
    assert scan is not None
    session.refresh(scan)
    assert (scan.status, scan.total, scan.ok, scan.real, scan.fake, scan.errors) == (
        "completed", 5, 4, 3, 1, 1,
    )  # fmt: skip
    assert scan.finished_at is not None and scan.finished_at >= scan.started_at
    with pytest.raises(ValueError):
        db.finish_scan(session, scan_id=scan_id, status="done")


def test_scan_summary(session: Session, scan_ids: tuple[int, int]) -> None:
    scan_id, model_id = scan_ids
    rows = [
        ok_row("/r1", 0.1), ok_row("/r2", 0.2), ok_row("/f1", 0.9),
        error_row("/e1", "decode"), error_row("/e2", "decode"), error_row("/e3", "too_large"),
        error_row("/e4", None),
    ]  # fmt: skip
    db.write_batch(session, scan_id=scan_id, model_id=model_id, rows=rows)
    db.finish_scan(session, scan_id=scan_id, status="completed")  # no chunks: counters are 0
    session.commit()
    summary = db.scan_summary(session, scan_id)
    assert (summary.scan_id, summary.name, summary.status) == (scan_id, "nightly", "completed")
    assert summary.model_sha256 == "a" * 64
    assert (summary.total, summary.ok, summary.real, summary.fake, summary.errors) == (
        7, 3, 2, 1, 4,
    )  # fmt: skip
    assert summary.errors_by_reason == {"decode": 2, "too_large": 1, "unknown": 1}
    assert summary.finished_at is not None and summary.started_at.tzinfo is not None
    assert summary.elapsed_s >= 0
    assert summary.images_per_s == (7 / summary.elapsed_s if summary.elapsed_s else 0.0)


def test_latest_scan_id(session: Session) -> None:
    assert db.latest_scan_id(session) is None
    model_id = db.get_or_create_model(session, sha256="d" * 64, name="m", path="/m", info={})
    ids = [
        db.create_scan(session, name=f"s{i}", roots=["/"], model_id=model_id, threshold=0.5,
                       settings={})  # fmt: skip
        for i in range(3)
    ]
    assert db.latest_scan_id(session) == max(ids)
    scan = session.get(Scan, ids[0])
    assert scan is not None and scan.status == "running" and scan.settings == {}


# --- reads ------------------------------------------------------------------------


@pytest.fixture
def two_scans(session: Session, scan_ids: tuple[int, int]) -> tuple[int, int]:
    first, model_id = scan_ids
    second = db.create_scan(
        session, name="second", roots=["/other"], model_id=model_id, threshold=0.5, settings={}
    )
    db.write_batch(session, scan_id=first, model_id=model_id, rows=[
        ok_row("/s1/b.jpg", 0.95), ok_row("/s1/a.jpg", 0.4), ok_row("/s1/c.jpg", 0.6),
        error_row("/s1/d.jpg", "decode"),
    ])  # fmt: skip
    db.write_batch(session, scan_id=second, model_id=model_id, rows=[ok_row("/s2/a.jpg", 0.99)])
    session.commit()
    return first, second


def test_iter_results_rows_and_order(session: Session, two_scans: tuple[int, int]) -> None:
    first, second = two_scans
    rows = list(db.iter_results(session))
    assert [(r["scan_id"], r["path"]) for r in rows] == [
        (first, "/s1/a.jpg"), (first, "/s1/b.jpg"), (first, "/s1/c.jpg"), (first, "/s1/d.jpg"),
        (second, "/s2/a.jpg"),
    ]  # fmt: skip
    assert list(rows[0]) == CONTRACT_VIEW_COLUMNS
    assert rows[0]["model_sha256"] == "a" * 64
    assert rows[0]["scanned_at"] == T0


def test_iter_results_filters(session: Session, two_scans: tuple[int, int]) -> None:
    first, second = two_scans

    def paths(**filters: object) -> list[str]:
        return [r["path"] for r in db.iter_results(session, **filters)]  # type: ignore[arg-type]

    assert paths(scan_id=second) == ["/s2/a.jpg"]
    assert paths(scan_id=first, label="fake") == ["/s1/b.jpg", "/s1/c.jpg"]
    assert paths(scan_id=first, label="real") == ["/s1/a.jpg"]
    assert paths(min_p=0.9) == ["/s1/b.jpg", "/s2/a.jpg"]
    assert paths(status="error") == ["/s1/d.jpg"]
    assert paths(scan_id=first, status="ok", min_p=0.5, label="fake") == ["/s1/b.jpg", "/s1/c.jpg"]
    # A limited read is in key order, (scan_id, path_hash): the primary key serves it without a sort.
    assert paths(limit=2) == sorted(["/s1/a.jpg", "/s1/b.jpg", "/s1/c.jpg", "/s1/d.jpg"], key=path_hash)[:2]
    assert paths(scan_id=9999) == []


def test_iter_results_streams(
    session: Session, scan_ids: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    scan_id, model_id = scan_ids
    db.write_batch(session, scan_id=scan_id, model_id=model_id,
                   rows=[ok_row(f"/s/{i:03}.jpg", 0.5) for i in range(60)])  # fmt: skip
    session.commit()
    monkeypatch.setattr(db.results, "STREAM_BATCH", 7)
    rows = db.iter_results(session, scan_id=scan_id)
    assert next(rows)["path"] == "/s/000.jpg"
    if session.get_bind().dialect.name == "postgresql":
        # The rows come from a server-side (named) cursor, not a client-side buffer.
        assert session.execute(text("SELECT count(*) FROM pg_cursors")).scalar() == 1
    assert len(list(rows)) == 59


def test_existing_paths(session: Session, two_scans: tuple[int, int]) -> None:
    first, second = two_scans
    asked = ["/s1/a.jpg", "/s1/z.jpg", "/s2/a.jpg", "/s1/d.jpg", "/s1/a.jpg"]
    assert db.existing_paths(session, first, asked) == {"/s1/a.jpg", "/s1/d.jpg"}
    assert db.existing_paths(session, second, asked) == {"/s2/a.jpg"}
    assert db.existing_paths(session, first, []) == set()


def test_walk_state_moves_out_of_the_audit_record(db_url: str) -> None:
    """Migration 0003: settings["producer"] of existing scans becomes the walk columns, and back on downgrade."""
    engine = db.make_engine(db_url)
    try:
        db.upgrade(engine, "0002")
        with engine.begin() as conn:
            model_id = conn.execute(text("INSERT INTO models (sha256, name, path, info) VALUES "
                                         "('ab', 'm', '/m.onnx', '{}') RETURNING id")).scalar_one()
            for name, status, settings in (
                ("fleet", "running", {"mode": "distributed", "producer": {"walk_done": True, "n_chunks": 7,
                                                                          "skipped": 3}}),
                ("old", "completed", {"user": "u"}),
            ):
                conn.execute(text("INSERT INTO scans (name, roots, model_id, status, threshold, settings) VALUES "
                                  "(:n, '[]', :m, :s, 0.5, :j)"),
                             {"n": name, "m": model_id, "s": status, "j": json.dumps(settings)})
        db.upgrade(engine)
        with db.session_factory(engine)() as session:
            rows = {s.name: s for s in session.query(Scan)}
            assert (rows["fleet"].walk_done, rows["fleet"].n_chunks, rows["fleet"].skipped) == (True, 7, 3)
            assert rows["fleet"].settings == {"mode": "distributed"}
            assert (rows["old"].walk_done, rows["old"].n_chunks, rows["old"].skipped) == (True, None, 0)
        db.downgrade(engine, "0002")
        with engine.connect() as conn:
            back = dict(conn.execute(text("SELECT name, settings FROM scans")).all())
        fleet = back["fleet"] if isinstance(back["fleet"], dict) else json.loads(back["fleet"])
        assert fleet["producer"] == {"walk_done": True, "n_chunks": 7, "skipped": 3}
    finally:
        engine.dispose()


# --- migration 0016: results keyed by (scan_id, path_hash) ----------------------------------------------------


def test_migration_0016_moves_rows_and_keys_up_and_down(db_engine: Engine) -> None:
    """Rows written under 0015 keep every column through 0016 and back; path_hash is the Python function's value,
    the children are keyed by it, the views keep their columns, and PostgreSQL has one partition per scan."""
    db.downgrade(db_engine, "0015")
    paths = ["/a/one.jpg", "/b/\u00e9t\u00e9 caf\u00e9.jpg", "/c/" + "x" * 300 + ".jpg"]
    with db_engine.begin() as conn:  # plain SQL: today's functions write the 0016 columns
        model_id = conn.execute(text("INSERT INTO models (sha256, name, path, info) VALUES (:h, 'm', '/m', '{}') "
                                     "RETURNING id"), {"h": "e" * 64}).scalar_one()
        scans = [conn.execute(text("INSERT INTO scans (name, roots, model_id, status, threshold, settings) "
                                   "VALUES (:n, '[]', :m, 'running', 0.5, '{}') RETURNING id"),
                              {"n": f"s{i}", "m": model_id}).scalar_one() for i in range(2)]
        for scan_id in scans:
            for i, path in enumerate(paths):
                conn.execute(text("INSERT INTO results (scan_id, model_id, path, status, label, p_fake, scanned_at) "
                                  "VALUES (:s, :m, :p, 'ok', 'real', :f, :t)"),
                             {"s": scan_id, "m": model_id, "p": path, "f": i / 10, "t": T0})
            conn.execute(text("INSERT INTO result_faces (scan_id, path, face_index, x, y, w, h, detector_score, "
                              "p_fake, label) VALUES (:s, :p, 0, 1, 2, 3, 4, 0.9, 0.2, 'real')"),
                         {"s": scan_id, "p": paths[1]})
            conn.execute(text("INSERT INTO result_provenance (scan_id, path, c2pa, synthetic_declared) "
                              "VALUES (:s, :p, 'none', false)"), {"s": scan_id, "p": paths[2]})

    def view_rows() -> list[tuple]:
        with db_engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(
                "SELECT scan_id, path, status, p_fake, model_sha256 FROM scan_results ORDER BY scan_id, path"))]

    before = view_rows()
    assert len(before) == 6
    db.upgrade(db_engine)
    assert view_rows() == before
    insp = inspect(db_engine)
    assert [c["name"] for c in insp.get_columns("scan_results")] == CONTRACT_VIEW_COLUMNS
    with db_engine.connect() as conn:
        stored = {(s, bytes(h)): p for s, h, p in conn.execute(text("SELECT scan_id, path_hash, path FROM results"))}
        assert stored == {(s, path_hash(p)): p for s in scans for p in paths}
        for table, path in (("result_faces", paths[1]), ("result_provenance", paths[2])):
            assert {bytes(h) for (h,) in conn.execute(text(f"SELECT path_hash FROM {table}"))} == {path_hash(path)}
        if db_engine.dialect.name == "postgresql":
            parts = dict(conn.execute(text(
                "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'results'::regclass")).all())
            assert parts == {f"results_p{s}": f"FOR VALUES IN ({s})" for s in scans}
            for s in scans:
                assert conn.execute(text(f"SELECT count(*) FROM results_p{s}")).scalar() == len(paths)
    # Down again: the id, the foreign keys and the (scan_id, path) key are back, with every row.
    db.downgrade(db_engine, "0015")
    assert view_rows() == before
    insp = inspect(db_engine)
    assert "path_hash" not in {c["name"] for c in insp.get_columns("results")}
    assert {u["name"] for u in insp.get_unique_constraints("results")} == {"uq_results_scan_id_path"}
    assert {fk["name"] for fk in insp.get_foreign_keys("results")} == {"fk_results_scan_id_scans",
                                                                       "fk_results_model_id_models"}
    assert "path_hash" not in {c["name"] for c in insp.get_columns("result_faces")}
    with db_engine.connect() as conn:
        ids = conn.execute(text("SELECT id FROM results ORDER BY id")).scalars().all()
        assert len(set(ids)) == 6 and None not in ids
    db.upgrade(db_engine)
    assert view_rows() == before


def test_a_scan_has_its_own_partition_and_rows_without_one_are_refused(db_engine: Engine,
                                                                        scan_ids: tuple[int, int]) -> None:
    """PostgreSQL: create_scan made the scan's partition and its rows are there; a scan id with no partition
    (no scan) has no row stored: the partition stands where the foreign key was."""
    if db_engine.dialect.name != "postgresql":
        pytest.skip("partitions are PostgreSQL's")
    scan_id, model_id = scan_ids
    sessions = db.session_factory(db_engine)
    with sessions.begin() as s:
        db.write_batch(s, scan_id=scan_id, model_id=model_id, rows=[ok_row("/p/1.jpg", 0.2), ok_row("/p/2.jpg", 0.7)])
    with db_engine.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM results_p{scan_id}")).scalar() == 2
    with pytest.raises(IntegrityError), sessions.begin() as s:
        s.execute(insert(Result).values(scan_id=scan_id + 1000, model_id=model_id, path="/x", path_hash=path_hash("/x"),
                                        status="error", scanned_at=T0))



# --- migration 0018: partial indexes on results ---------------------------------------------------------------


def test_migration_0018_partial_indexes_up_and_down(db_engine: Engine, scan_ids: tuple[int, int]) -> None:
    """At head the three indexes of results hold only the rows their queries select (on PostgreSQL in every scan's
    partition too) and (model_id, path_hash) is gone; 0017 has all four whole; rows and answers stay through both."""
    import dataclasses

    scan_id, model_id = scan_ids
    with db.session_factory(db_engine).begin() as s:
        db.write_batch(s, scan_id=scan_id, model_id=model_id, rows=[
            ok_row("/p/real.jpg", 0.1), ok_row("/p/fake.jpg", 0.9), ok_row("/p/fake2.jpg", 0.7),
            error_row("/p/bad.jpg", "decode-failed"),
            dataclasses.replace(ok_row("/p/hashed.jpg", 0.2), content_hash="c" * 64)])  # fmt: skip
    # Each index by its columns (a partition's are named after the partition), with its condition.
    columns = {"scan_id,status": "status <> ok", "scan_id,p_fake": "label = fake",
               "content_hash": "content_hash is not null"}
    at_0017 = {**dict.fromkeys(columns), "model_id,path_hash": None}
    if db_engine.dialect.name == "postgresql":
        sql = "SELECT indexdef FROM pg_indexes WHERE tablename = :t"
        tables = ["results", f"results_p{scan_id}"]
    else:
        sql = "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = :t AND sql IS NOT NULL"
        tables = ["results"]

    def indexes(table: str) -> dict[str, str | None]:
        with db_engine.connect() as conn:
            found = conn.execute(text(sql), {"t": table}).scalars().all()
        out = {}
        for ddl in found:  # PostgreSQL states ((status)::text <> 'ok'::text); SQLite as written
            ddl = "".join(ch for ch in ddl.lower().replace("::text", "") if ch not in "()\"'")
            if ddl.startswith("create unique index"):  # the key (PostgreSQL lists it)
                continue
            cols, _, where = ddl.split(" on ", 1)[1].split(" ", 2 if " on only " in ddl else 1)[-1].partition(" where ")
            out[cols.removeprefix("using btree ").replace(" ", "")] = where or None
        return out

    def answers() -> tuple:
        with db_engine.connect() as conn:
            return tuple(conn.execute(text(q), {"s": scan_id, "h": "c" * 64}).scalars().all() for q in (
                "SELECT path FROM results WHERE scan_id = :s AND status = 'error'",
                "SELECT path FROM results WHERE scan_id = :s AND label = 'fake' ORDER BY p_fake DESC",
                "SELECT path FROM results WHERE content_hash = :h",
                "SELECT path FROM results WHERE scan_id = :s ORDER BY path"))

    expected = (["/p/bad.jpg"], ["/p/fake.jpg", "/p/fake2.jpg"], ["/p/hashed.jpg"],
                ["/p/bad.jpg", "/p/fake.jpg", "/p/fake2.jpg", "/p/hashed.jpg", "/p/real.jpg"])
    assert all(indexes(t) == columns for t in tables) and answers() == expected
    db.downgrade(db_engine, "0017")
    assert all(indexes(t) == at_0017 for t in tables) and answers() == expected
    db.upgrade(db_engine)
    assert all(indexes(t) == columns for t in tables) and answers() == expected
