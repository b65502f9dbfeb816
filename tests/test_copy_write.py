"""The PostgreSQL write path (COPY, and the staging upsert it falls back to) against the upsert it replaced.

Real PostgreSQL throughout: the rows COPY writes are compared column by column
with the rows of the SQLAlchemy ``executemany`` upsert (the path SQLite keeps),
for NULLs, awkward paths (tabs, newlines, backslashes, quotes, names that were
not UTF-8) and face rows; re-running a flush or a chunk rewrites the same rows;
a connection lost in the middle of a COPY is a transient error that the worker's
retry knows; a chunk's rows and its completion commit together or not at all.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError, OperationalError

from dfscan import db
from dfscan.db import results as results_module
from dfscan.db.models import Chunk, Result, ResultFace
from dfscan.db.paths import path_hash
from dfscan.scanner import Chunk as ChunkMessage
from dfscan.scanner.paths import storable
from dfscan.core.settings import Settings
from dfscan.workers.scoring import loop as pipeline
from dfscan.workers.scoring.context import ScanContext
from tests._awkward import AWKWARD_PATHS, write_awkward
from tests._images import write_jpegs
from tests._models import tiny_onnx_model  # noqa: F401 - fixture

pytestmark = pytest.mark.postgres

T0 = datetime(2025, 11, 25, 8, 0, 0, 123456, tzinfo=UTC)
ODD_PATHS = AWKWARD_PATHS + [
    "/data/carriage\rreturn.jpg",
    "/data/\\N looks like NULL.jpg",
    "\\N",
    storable(os.fsdecode(b"/data/bad\xffname.jpg")),
    storable(os.fsdecode(b"/data/mixed\\\xfe\\x41.jpg")),
    storable("/data/bad\\xffname.jpg"),  # the literal text of an escape
    "/data/" + "deep/" * 300 + "long.jpg",  # 1.5 KB: long, within the index's limit
]


def _rows(paths: list[str]) -> list[db.ResultRow]:
    """Every shape of row: verdicts, errors with and without a code, all-NULL optionals, faces."""
    out: list[db.ResultRow] = []
    for i, path in enumerate(paths):
        kind = i % 4
        if kind == 0:
            out.append(db.ResultRow(path, 5_000_000_000 + i, 1_700_000_000.123456, "ok", "fake", 0.9999999999999999,
                                    0.9999999999999999, None, None, T0))
        elif kind == 1:
            out.append(db.ResultRow(path, None, None, "error", None, None, None,
                                    "message with\ttab, newline\nand back\\slash", "decode", T0))
        elif kind == 2:
            out.append(db.ResultRow(path, None, None, "error", None, None, None, None, None, T0))
        else:
            faces = (db.FaceRow(0, 1, 2, 30, 40, 0.99, 0.2, "real"), db.FaceRow(1, 50, 60, 7, 8, 0.75, 0.8, "fake"))
            out.append(db.ResultRow(path, 12, 0.0, "ok", "real", 0.0, 1.0, None, None, T0, faces=2, faces_found=3,
                                    face_rows=faces))
    return out


def _awkward_paths(tmp_path) -> list[str]:
    return [storable(str(p)) for p in write_awkward(tmp_path / "awkward").values()]


@pytest.fixture
def pg(pg_url):
    engine = db.make_engine(pg_url)
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    with sessions.begin() as s:
        model_id = db.get_or_create_model(s, sha256="c" * 64, name="m", path="/m.onnx", info={})
        scans = [db.create_scan(s, name=f"s{i}", roots=["/data"], model_id=model_id, threshold=0.5, settings={})
                 for i in range(3)]
    try:
        yield sessions, model_id, scans
    finally:
        engine.dispose()


def _stored(sessions, scan_id: int) -> dict[str, tuple]:
    with sessions() as s:
        rows = s.execute(select(Result).where(Result.scan_id == scan_id)).scalars().all()
        faces = s.execute(select(ResultFace).where(ResultFace.scan_id == scan_id)).scalars().all()
        out = {}
        for r in rows:
            out[r.path] = tuple(getattr(r, c) for c in results_module._UPSERT_COLUMNS) + (
                tuple(sorted((f.face_index, f.x, f.y, f.w, f.h, f.detector_score, f.p_fake, f.label)
                             for f in faces if f.path == r.path)),
            )
        return out


def _old_upsert(session, scan_id: int, model_id: int, rows: list[db.ResultRow]) -> None:
    """The write path before COPY: one executemany upsert of dicts (what SQLite still runs), then the faces."""
    values = [{"scan_id": scan_id, "model_id": model_id, "path_hash": path_hash(r.path),
               **dict(zip(results_module.ROW_COLUMNS, results_module._row_values(r)))} for r in rows]
    session.execute(results_module._upsert_statement(session), values)
    results_module._write_faces(session, scan_id, rows)


def test_copy_writes_exactly_the_rows_the_upsert_wrote(pg, tmp_path) -> None:
    sessions, model_id, (by_copy, by_upsert, _) = pg
    rows = _rows(ODD_PATHS + _awkward_paths(tmp_path))
    with sessions.begin() as s:
        db.write_batch(s, scan_id=by_copy, model_id=model_id, rows=rows)
    with sessions.begin() as s:
        _old_upsert(s, by_upsert, model_id, rows)
    copied, upserted = _stored(sessions, by_copy), _stored(sessions, by_upsert)
    assert set(copied) == {r.path for r in rows}
    assert copied == upserted
    # And what went in is what comes out: NULLs stay NULL, text stays byte for byte.
    for row in rows:
        expected = tuple(model_id if c == "model_id" else getattr(row, c) for c in results_module._UPSERT_COLUMNS)
        assert copied[row.path][:-1] == expected, row.path
    faced = [r for r in rows if r.face_rows]
    assert faced and all(len(copied[r.path][-1]) == 2 for r in faced)


def test_rerunning_a_flush_rewrites_the_same_rows(pg, tmp_path) -> None:
    sessions, model_id, (scan_id, *_) = pg
    rows = _rows(ODD_PATHS + _awkward_paths(tmp_path))
    with sessions.begin() as s:
        db.write_batch(s, scan_id=scan_id, model_id=model_id, rows=rows)
    first = _stored(sessions, scan_id)
    with sessions() as s:
        ids = dict(s.execute(select(Result.path, Result.path_hash).where(Result.scan_id == scan_id)).all())
    assert ids == {row.path: path_hash(row.path) for row in rows}  # one row per path, keyed by its hash
    for _ in range(2):  # the same flush again: every path conflicts, so the staging upsert runs
        with sessions.begin() as s:
            db.write_batch(s, scan_id=scan_id, model_id=model_id, rows=rows)
        assert _stored(sessions, scan_id) == first
    with sessions() as s:
        assert dict(s.execute(select(Result.path, Result.path_hash).where(Result.scan_id == scan_id)).all()) == ids


def test_a_flush_with_some_paths_already_there_upserts_them_all(pg) -> None:
    sessions, model_id, (scan_id, *_) = pg
    old = [db.ResultRow(p, None, None, "error", None, None, None, "io", "unreadable", T0) for p in ODD_PATHS[:5]]
    with sessions.begin() as s:
        db.write_batch(s, scan_id=scan_id, model_id=model_id, rows=old)
    new = _rows(ODD_PATHS)  # five paths again (now verdicts and other errors), the rest new
    with sessions.begin() as s:
        db.write_batch(s, scan_id=scan_id, model_id=model_id, rows=new)
        # Two flushes in one transaction: the staging table holds nothing of the first.
        db.write_batch(s, scan_id=scan_id, model_id=model_id, rows=new[:3])
    stored = _stored(sessions, scan_id)
    assert set(stored) == set(ODD_PATHS)
    status, code = results_module._UPSERT_COLUMNS.index("status"), results_module._UPSERT_COLUMNS.index("error_code")
    for row in new:
        assert (stored[row.path][status], stored[row.path][code]) == (row.status, row.error_code)


def test_a_row_the_schema_refuses_is_an_integrity_error_not_a_fallback(pg) -> None:
    sessions, model_id, (scan_id, *_) = pg
    bad = db.ResultRow("/nan.jpg", None, None, "ok", "real", float("nan"), None, None, None, T0)
    with pytest.raises(IntegrityError), sessions.begin() as s:
        db.write_batch(s, scan_id=scan_id, model_id=model_id, rows=[bad])
    assert _stored(sessions, scan_id) == {}


def test_a_connection_lost_during_copy_is_transient_and_the_retry_writes(pg, pg_url) -> None:
    sessions, model_id, (scan_id, *_) = pg
    rows = _rows(ODD_PATHS)
    killed = []

    def work() -> None:
        with sessions.begin() as s:
            if not killed:
                pid = s.connection().connection.driver_connection.info.backend_pid
                dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
                with psycopg.connect(dsn, autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                killed.append(pid)
            db.write_batch(s, scan_id=scan_id, model_id=model_id, rows=rows)

    with pytest.raises(OperationalError) as lost:
        work()
    assert db.is_transient(lost.value)
    db.retry_db(work, deadline_s=30, first_delay_s=0.01)
    assert set(_stored(sessions, scan_id)) == set(ODD_PATHS)


# --- a chunk: one transaction with its completion ----------------------------------------


@pytest.fixture
def ctx(pg_url, tiny_onnx_model):  # noqa: F811 - fixture
    context = ScanContext.open(Settings(db_url=pg_url, model=tiny_onnx_model, batch_size=4))
    try:
        yield context
    finally:
        context.close()


def _chunk(ctx, tmp_path, n: int) -> tuple[ChunkMessage, int]:
    paths = tuple(str(p) for p in write_jpegs(tmp_path / "imgs", n, size=(32, 32))) + ("/missing/file.jpg",)
    model_id = ctx.register_model()
    with ctx.sessions.begin() as s:
        scan_id = db.create_scan(s, name="chunk", roots=[], model_id=model_id, threshold=0.5, settings={})
        chunk_id = db.add_chunk(s, scan_id=scan_id, seq=0, paths=list(paths))
    return ChunkMessage(scan_id, 0, paths, chunk_id), model_id


def _chunk_state(ctx, chunk_id: int) -> tuple:
    with ctx.sessions() as s:
        c = s.get(Chunk, chunk_id)
        return c.status, c.ok, c.errors, c.lease_until


def test_a_chunk_is_one_transaction_with_its_completion(ctx, tmp_path, monkeypatch) -> None:
    chunk, model_id = _chunk(ctx, tmp_path, 10)
    engine = ctx.engine
    commits: list[object] = []

    def on_commit(conn) -> None:
        commits.append(conn)

    event.listen(engine, "commit", on_commit)
    try:
        result = pipeline.score_chunk(ctx, chunk, model_id)
    finally:
        event.remove(engine, "commit", on_commit)
    assert (result.total, result.ok, result.errors) == (11, 10, 1)
    assert len(commits) == 1  # three batches of 4, one commit: rows, chunk done, lease ended
    assert _chunk_state(ctx, chunk.chunk_id) == ("done", 10, 1, None)
    assert set(result.timings) == {"read", "score", "write"}


def test_a_large_chunk_commits_every_flush_rows_and_reruns_the_same(ctx, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(pipeline, "FLUSH_ROWS", 4)
    chunk, model_id = _chunk(ctx, tmp_path, 10)
    first = pipeline.score_chunk(ctx, chunk, model_id)
    with ctx.sessions() as s:
        before = {r.path: (r.path_hash, r.status, r.p_fake) for r in s.scalars(select(Result).where(Result.scan_id == chunk.scan_id))}
    second = pipeline.score_chunk(ctx, chunk, model_id)  # a redelivery: every row is there
    with ctx.sessions() as s:
        after = {r.path: (r.path_hash, r.status, r.p_fake) for r in s.scalars(select(Result).where(Result.scan_id == chunk.scan_id))}
    assert (first.total, first.ok, first.errors) == (second.total, second.ok, second.errors) == (11, 10, 1)
    assert before == after and set(after) == set(chunk.paths)
    assert _chunk_state(ctx, chunk.chunk_id) == ("done", 10, 1, None)


def test_rows_and_the_chunks_end_commit_together(ctx, tmp_path) -> None:
    chunk, model_id = _chunk(ctx, tmp_path, 3)
    gone = ChunkMessage(chunk.scan_id, chunk.seq, chunk.paths, chunk_id=10**9)  # its completion can't be written
    with pytest.raises(db.ChunkNotFound):
        pipeline.score_chunk(ctx, gone, model_id)
    with ctx.sessions() as s:
        assert s.scalars(select(Result).where(Result.scan_id == chunk.scan_id)).all() == []


# --- the producer's group of chunks: one statement, replayable --------------------------


def test_a_group_of_chunks_is_one_insert_and_a_replay_finds_the_same_ids(pg) -> None:
    sessions, _, (scan_id, *_) = pg
    groups = [[f"/g/{k}/{i}.jpg" for i in range(3)] for k in range(4)]
    statements: list[str] = []
    with sessions.begin() as s:
        event.listen(s.connection(), "before_cursor_execute", lambda *a: statements.append(a[2]))
        ids = db.add_chunks(s, scan_id=scan_id, first_seq=0, batches=groups[:3])
    assert len([q for q in statements if q.lstrip().upper().startswith("INSERT")]) == 1
    with sessions.begin() as s:  # a walk replayed past what it recorded: the first three again, then one new
        again = db.add_chunks(s, scan_id=scan_id, first_seq=0, batches=groups)
    assert again[:3] == ids and len(set(again)) == 4
    with sessions() as s:
        stored = s.execute(select(Chunk.seq, Chunk.paths, Chunk.n_paths, Chunk.status)
                           .where(Chunk.scan_id == scan_id).order_by(Chunk.seq)).all()
    assert [tuple(r) for r in stored] == [(k, groups[k], 3, "queued") for k in range(4)]
    with pytest.raises(db.DatabaseError, match="chunk 2 of scan"), sessions.begin() as s:
        db.add_chunks(s, scan_id=scan_id, first_seq=1, batches=[groups[1], ["/other.jpg"]])
