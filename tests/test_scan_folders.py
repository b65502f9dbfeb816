"""A scan's rows per folder (``scan_folders``, migration 0020): what ``finish_scan`` stores on both databases,
against counts made here from the rows; a folder longer than a btree entry allows; a running scan has none
until it ends; and the migration that makes the table and fills it for scans that had already ended."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from sqlalchemy import Engine, inspect, text

from dfscan import db

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# A folder of 3,000 bytes of random-looking names: over PostgreSQL's btree limit (2,704 bytes) uncompressed,
# so it could not be (part of) a key.
LONG = "/deep/" + "/".join(f"{k:04x}{(k * 7919) % 65521:05x}x" for k in range(300)) + "/"


def _ok(path: str, p_fake: float) -> db.ResultRow:
    return db.ResultRow(path=path, size=1, mtime=1.0, status="ok", label="fake" if p_fake >= 0.5 else "real",
                        p_fake=p_fake, confidence=max(p_fake, 1 - p_fake), error=None, error_code=None, scanned_at=T0)


def _rows() -> list[db.ResultRow]:
    """Fakes and reals in nested local folders, an s3 prefix, a file at the root, errors, the long folder."""
    rows = [_ok(f"/data/a/{k}.jpg", 0.9 if k < 3 else 0.1) for k in range(5)]
    rows += [_ok(f"/data/a/b/{k}.jpg", 0.8) for k in range(2)]
    rows += [_ok("s3://bucket/x/y/1.jpg", 0.2), _ok("s3://bucket/x/y/2.jpg", 0.7), _ok("/root.jpg", 0.6)]
    rows += [db.ResultRow.error_row("/data/a/bad.jpg", 0, 1.0, "empty", "empty file", T0),
             db.ResultRow.error_row("/data/errors/only.jpg", 0, 1.0, "empty", "empty file", T0)]
    rows += [_ok(LONG + "1.jpg", 0.9), _ok(LONG + "2.jpg", 0.3)]
    return rows


def _expected(rows: list[db.ResultRow]) -> dict[str, tuple[int, int, int]]:
    """folder -> (files, scored, fakes), cut here in Python: up to and including the last '/'."""
    files, scored, fakes = Counter(), Counter(), Counter()
    for r in rows:
        folder = r.path[: r.path.rindex("/") + 1]
        files[folder] += 1
        scored[folder] += r.status == "ok"
        fakes[folder] += r.status == "ok" and r.label == "fake"
    return {f: (files[f], scored[f], fakes[f]) for f in files}


def _scan(engine: Engine, *, end: bool = True) -> int:
    with db.session_factory(engine).begin() as s:
        model_id = db.get_or_create_model(s, sha256="a" * 64, name="m", path="/m.onnx", info={})
        scan_id = db.create_scan(s, name="folders", roots=["/data"], model_id=model_id, threshold=0.5, settings={})
        db.write_batch(s, scan_id=scan_id, model_id=model_id, rows=_rows())
        if end:
            db.finish_scan(s, scan_id=scan_id, status="completed")
    return scan_id


def _stored(engine: Engine, scan_id: int) -> list[tuple[int, str, int, int, int]]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(text(
            "SELECT position, folder, files, scored, fakes FROM scan_folders WHERE scan_id = :s ORDER BY position"),
            {"s": scan_id})]


def test_finish_scan_counts_every_folder(db_engine: Engine) -> None:
    scan_id = _scan(db_engine)
    stored = _stored(db_engine, scan_id)
    assert [p for p, *_ in stored] == list(range(1, len(stored) + 1))
    assert {f: (n, k, x) for _, f, n, k, x in stored} == _expected(_rows())
    assert any(f == LONG for _, f, *_ in stored) and len(LONG) > 2_704
    # The guide's query 3 on them: the rate per folder with a verdict, highest first, then by name (the
    # error-only folder has none; the two with a fake rate of 1 lead).
    from tests.test_sql_guide import QUERIES

    with db_engine.connect() as c:
        got = c.exec_driver_sql(QUERIES["fake-rate-by-folder"].replace("scan_id = 1", f"scan_id = {scan_id}")).all()
    assert [tuple(r[:3]) for r in got][:2] == [("/", 1, 1), ("/data/a/b/", 2, 2)]
    assert "/data/errors/" not in {r[0] for r in got} and len(got) == len(stored) - 1


def test_a_running_scan_has_no_folders_until_it_ends_and_ending_again_replaces_them(db_engine: Engine) -> None:
    scan_id = _scan(db_engine, end=False)
    assert _stored(db_engine, scan_id) == []
    with db.session_factory(db_engine).begin() as s:
        db.cancel_scan(s, scan_id)
    once = _stored(db_engine, scan_id)
    assert len(once) == len(_expected(_rows()))
    with db.session_factory(db_engine).begin() as s:
        db.finish_scan(s, scan_id=scan_id, status="completed")
    assert _stored(db_engine, scan_id) == once


def test_migration_0020_fills_ended_scans_and_goes_down(db_engine: Engine) -> None:
    """Down to 0019 the table is gone; up again, the ended scan gets what finish_scan stores, a running one none."""
    ended = _scan(db_engine)
    expected = _stored(db_engine, ended)
    running = _scan(db_engine, end=False)
    db.downgrade(db_engine, "0019")
    assert "scan_folders" not in set(inspect(db_engine).get_table_names())
    db.upgrade(db_engine)
    assert _stored(db_engine, ended) == expected and expected
    assert _stored(db_engine, running) == []
