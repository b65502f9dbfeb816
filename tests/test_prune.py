"""`dfscan prune` and the nightly retention entry, on SQLite and PostgreSQL.

Each scan is filled through the product's own writers with rows in every table that has a ``scan_id``
(results with faces, a video's frames, matches and their notices, provenance, explanations, chunks, workers,
a callback, a review); the test fails if the database has a scan table the fixture left empty, so a table a
later migration adds must be covered here too.  Row counts per scan and table are taken before and after,
so "removes exactly that scan's rows and leaves the others" is checked table by table.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text

from dfscan import db
from dfscan.cli import main
from dfscan.core.settings import Settings
from dfscan.db.records import FaceRow, FrameRow, MatchRow, ProvenanceRow, ResultRow
from dfscan.db.retention import prune, scan_tables
from dfscan.db.reviews import record_decision
from dfscan.db.folders import record_folders
from dfscan.db.near_copies import record_near_copies
from dfscan.db.sources import record_sources

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=120)


def _fill(engine: Engine, *, name: str, status: str, ended: datetime, tag: str) -> int:
    """A scan with rows in every scan table; its id."""
    from dfscan.db.api_keys import create_api_key
    from dfscan.db.banks import create_bank
    from dfscan.db.callbacks import add_callback

    sessions = db.session_factory(engine)
    with sessions() as s:
        model_id = db.get_or_create_model(s, sha256="a" * 64, name="tiny", path="/m/model.onnx", info={})
        scan_id = db.create_scan(s, name=name, roots=["/data"], model_id=model_id, threshold=0.5, settings={})
        key = create_api_key(s, f"key-{tag}")
        add_callback(s, scan_id=scan_id, api_key_id=key.info.id, url="http://127.0.0.1:9/callback")
        bank, _ = create_bank(s, f"bank-{tag}", kind="sha256")
        s.commit()
        when = NOW
        image = ResultRow(
            path=f"/data/{tag}/face.jpg", size=10, mtime=1.0, status="ok", label="fake", p_fake=0.9,
            confidence=0.9, error=None, error_code=None, scanned_at=when, faces=1, faces_found=1,
            face_rows=(FaceRow(0, 1, 2, 30, 30, 0.99, 0.9, "fake"),), content_hash="c" * 64,
            matches=1, match_rows=(MatchRow(bank.id, bank.name, "ref", "label", 0, "c" * 64),),
            synthetic_declared=True, provenance=ProvenanceRow(generator="gen", synthetic_declared=True))
        video = ResultRow(
            path=f"/data/{tag}/clip.mp4", size=20, mtime=1.0, status="ok", label="real", p_fake=0.1,
            confidence=0.9, error=None, error_code=None, scanned_at=when, kind="video", frames=2, duration_s=1.0,
            frame_rows=tuple(FrameRow(0, i, i * 0.5, None, None, None, None, None, 0.1) for i in range(2)))
        # Two of them near copies (the same PDQ): a pair in scan_near_copies.
        plain = [ResultRow(path=f"/data/{tag}/{i}.jpg", size=1, mtime=1.0, status="ok", label="real", p_fake=0.2,
                           confidence=0.8, error=None, error_code=None, scanned_at=when,
                           pdq="5a" * 32 if i < 2 else None, pdq_quality=90 if i < 2 else None) for i in range(7)]
        broken = ResultRow.error_row(f"/data/{tag}/bad.jpg", 0, 1.0, "empty", "empty file", when)
        rows = [image, video, *plain, broken]
        db.add_chunk(s, scan_id=scan_id, seq=0, paths=[r.path for r in rows])
        db.record_worker(s, scan_id=scan_id, host="h", pid=1, info={"runtime": "onnxruntime", "decoder": "pillow"})
        db.write_batch(s, scan_id=scan_id, model_id=model_id, rows=rows)
        db.write_explanations(s, scan_id, [db.ExplanationRow(path=image.path, status="unexplainable", method="m",
                                                             target_layer="l", checkpoint_sha256="b" * 64,
                                                             reason="not-scored")])
        record_decision(s, scan_id, image.path, "fake", "tester")
        # What finish_scan writes when a scan ends (scan_sources, scan_near_copies: 0019; scan_folders: 0020).
        record_sources(s, scan_id)
        record_folders(s, scan_id)
        assert record_near_copies(s, scan_id) == 1
        s.execute(text("UPDATE scans SET status = :st, started_at = :t, finished_at = :f WHERE id = :i"),
                  {"st": status, "t": ended, "f": None if status == "running" else ended, "i": scan_id})
        s.commit()
    return scan_id


def _counts(engine: Engine) -> dict[tuple[str, int], int]:
    """Rows per (table, scan) of every scan table, and ('scans', id) for each scans row."""
    out: dict[tuple[str, int], int] = {}
    with engine.connect() as c:
        for t in scan_tables(c):
            for scan_id, n in c.execute(text(f"SELECT scan_id, COUNT(*) FROM {t.name} GROUP BY scan_id")):
                out[(t.name, scan_id)] = n
        for (scan_id,) in c.execute(text("SELECT id FROM scans")):
            out[("scans", scan_id)] = 1
    return out


def _partitions(engine: Engine) -> set[str]:
    if engine.dialect.name != "postgresql":
        return set()
    with engine.connect() as c:
        return set(c.execute(text("SELECT relname FROM pg_class WHERE relispartition AND relkind IN ('r', 'p')"))
                   .scalars())


@pytest.fixture
def filled(db_engine: Engine) -> tuple[Engine, dict[str, int]]:
    scans = {
        "old": _fill(db_engine, name="old", status="completed", ended=OLD, tag="a"),
        "recent": _fill(db_engine, name="recent", status="completed", ended=NOW - timedelta(days=2), tag="b"),
        "running": _fill(db_engine, name="old-running", status="running", ended=OLD, tag="c"),
    }
    return db_engine, scans


def _cli(url: str, *args: str):
    return CliRunner().invoke(main, ["prune", "--db", url, *args])


def test_prune_dry_run_then_exactly_one_scan(filled: tuple[Engine, dict[str, int]]) -> None:
    engine, scans = filled
    url = engine.url.render_as_string(hide_password=False)
    before = _counts(engine)
    with engine.connect() as c:
        tables = [t.name for t in scan_tables(c)]
    empty = [t for t in tables if (t, scans["old"]) not in before]
    assert not empty, f"the fixture left these scan tables empty: {empty}"
    parts_before = _partitions(engine)

    dry = _cli(url, "--older-than", "90d", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.output)
    assert plan["dry_run"] is True
    assert [s["scan_id"] for s in plan["scans"]] == [scans["old"]]
    assert plan["skipped_running"] == [scans["running"]]
    expected = {t: before[(t, scans["old"])] for t in [*tables, "scans"]}
    assert plan["scans"][0]["rows"] == expected
    assert _counts(engine) == before, "a dry run changed rows"
    assert _partitions(engine) == parts_before

    done = _cli(url, "--older-than", "90d", "--yes", "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["dry_run"] is False and report["scans"][0]["rows"] == expected
    after = _counts(engine)
    assert after == {k: n for k, n in before.items() if k[1] != scans["old"]}
    if engine.dialect.name == "postgresql":
        dropped = set(report["scans"][0]["partitions_dropped"])
        with engine.connect() as c:
            partitioned = c.execute(text("SELECT COUNT(*) FROM pg_partitioned_table")).scalar_one()
        if partitioned:  # the results schema partitioned by scan (migration 0016): its partition went whole
            assert dropped, "results is partitioned, yet no partition was dropped"
        assert _partitions(engine) == parts_before - dropped
        assert len(_partitions(engine)) == len(parts_before) - len(dropped)

    again = _cli(url, "--older-than", "90d", "--yes")
    assert again.exit_code == 0 and "removed 0 scan(s)" in again.output, again.output


def test_prune_scan_refuses_running_unless_asked(filled: tuple[Engine, dict[str, int]]) -> None:
    engine, scans = filled
    url = engine.url.render_as_string(hide_password=False)
    before = _counts(engine)
    refused = _cli(url, "--scan", str(scans["running"]), "--yes")
    assert refused.exit_code == 1
    assert f"scan {scans['running']} is still running" in refused.output and "Traceback" not in refused.output
    missing = _cli(url, "--scan", "999", "--yes")
    assert missing.exit_code == 1 and "scan 999 does not exist" in missing.output
    unconfirmed = _cli(url, "--scan", str(scans["recent"]))  # no --yes, nobody answers: nothing removed
    assert unconfirmed.exit_code == 1 and "Remove 1 scan(s)" in unconfirmed.output
    assert _counts(engine) == before

    # Bounded batches: three rows per transaction, many transactions for this scan's tables.
    report = prune(engine, scan_ids=[scans["running"]], include_running=True, batch_rows=3)
    assert [s.scan_id for s in report.scans] == [scans["running"]]
    assert _counts(engine) == {k: n for k, n in before.items() if k[1] != scans["running"]}
    _a_table_it_was_never_told_about(engine, {k: v for k, v in scans.items() if k != "running"})


def test_nightly_retention_entry_prunes(filled: tuple[Engine, dict[str, int]], tmp_path) -> None:
    """The beat entry made from DFSCAN_RETENTION, and its task run by Celery (in-process: no broker needed)."""
    from celery.schedules import crontab

    from dfscan.workers.fleet.app import RETENTION_TASK, create_app
    from dfscan.workers.fleet.schedule import RETENTION_ENTRY, retention_schedule

    engine, scans = filled
    url = engine.url.render_as_string(hide_password=False)
    off = Settings(db_url=url, broker_url="redis://127.0.0.1:1/0")
    assert retention_schedule(off) == {}, "retention is off by default"
    settings = off.with_(retention="90d", retention_cron="15 3 * * *")
    schedule = retention_schedule(settings)
    entry = schedule[RETENTION_ENTRY]
    assert entry["task"] == RETENTION_TASK and entry["kwargs"] == {"older_than": "90d"}
    assert entry["schedule"] == crontab(minute="15", hour="3")

    sched = tmp_path / "nightly.toml"
    sched.write_text('[[scan]]\nname = "n"\ncron = "0 1 * * *"\nroots = ["/data"]\nmodel = "/m.onnx"\n')
    check = CliRunner().invoke(main, ["beat", "--schedule", str(sched), "--check"],
                               env={"DFSCAN_RETENTION": "90d", "DFSCAN_DB_URL": url})
    assert check.exit_code == 0 and RETENTION_ENTRY in check.output and "older than 90d" in check.output
    bad = CliRunner().invoke(main, ["beat", "--schedule", str(sched), "--check"], env={"DFSCAN_RETENTION": "soon"})
    assert bad.exit_code == 1 and "'soon' is not a duration" in bad.output

    before = _counts(engine)
    app = create_app(settings)
    assert app.conf.task_routes[RETENTION_TASK]["queue"] == app.conf.task_routes["dfscan.scheduled_scan"]["queue"]
    result = app.tasks[RETENTION_TASK].apply(kwargs=entry["kwargs"])
    assert result.successful(), result.traceback
    assert result.get()["scans"] == [scans["old"]] and result.get()["skipped_running"] == [scans["running"]]
    assert _counts(engine) == {k: n for k, n in before.items() if k[1] != scans["old"]}


def _a_table_it_was_never_told_about(engine: Engine, scans: dict[str, int]) -> None:
    """A table made outside the ORM (a later migration's): found by its scan_id column and emptied; on
    PostgreSQL made partitioned by scan, so the scan's partition is dropped whole and the others stay."""
    pg = engine.dialect.name == "postgresql"
    with engine.begin() as c:
        if pg:
            c.execute(text("CREATE TABLE later_rows (scan_id integer NOT NULL, n integer NOT NULL, "
                           "PRIMARY KEY (scan_id, n)) PARTITION BY LIST (scan_id)"))
            for scan_id in scans.values():
                c.execute(text(f"CREATE TABLE later_rows_{scan_id} PARTITION OF later_rows FOR VALUES IN ({scan_id})"))
        else:
            c.execute(text("CREATE TABLE later_rows (scan_id integer NOT NULL, n integer NOT NULL)"))  # no key
        for scan_id in scans.values():
            c.execute(text("INSERT INTO later_rows (scan_id, n) VALUES (:s, 1), (:s, 2), (:s, 3)"), {"s": scan_id})
    before = _counts(engine)
    assert before[("later_rows", scans["old"])] == 3
    report = prune(engine, scan_ids=[scans["old"]], batch_rows=2)
    assert report.scans[0].rows["later_rows"] == 3
    assert _counts(engine) == {k: n for k, n in before.items() if k[1] != scans["old"]}
    if pg:
        assert f"later_rows_{scans['old']}" in report.scans[0].partitions
        assert {f"later_rows_{scans['old']}", f"later_rows_{scans['recent']}"} & _partitions(engine) == \
            {f"later_rows_{scans['recent']}"}
