"""Bad input ends in one line and a non-zero exit, never a traceback, and never a scan left ``running``."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from dfscan import db
from dfscan.cli import main
from dfscan.scanner import ScanSource
from dfscan.core.settings import Settings, SettingsError, from_env
from dfscan.workers.fleet.metrics import start_metrics_server
from tests._images import write_jpegs
from tests._models import tiny_onnx_model  # noqa: F401 - fixture

DFSCAN = Path(sys.executable).with_name("dfscan")
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def no_traceback(res) -> None:
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output


def scan_rows(url: str) -> list[tuple]:
    engine = db.make_engine(url)
    try:
        db.upgrade(engine)
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text("SELECT id, name, status FROM scans"))]
    finally:
        engine.dispose()


def test_unreachable_broker_is_one_line_and_leaves_no_running_scan(tmp_path, tiny_onnx_model, db_url):
    write_jpegs(tmp_path / "imgs", 2)
    res = invoke("scan", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model), "--db", db_url,
                 "--broker", "redis://127.0.0.1:1/0")
    no_traceback(res)
    assert res.exit_code == 1 and "cannot reach the broker at redis://127.0.0.1:1/0" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert [r for r in scan_rows(db_url) if r[2] == "running"] == []


@pytest.mark.postgres
def test_long_names_fit_the_column_or_are_refused(tmp_path, tiny_onnx_model, pg_url):
    folder = tmp_path / ("a" * 250)  # a legal directory name; with the timestamp, over varchar(255)
    write_jpegs(folder, 1)
    res = invoke("scan", str(folder), "--model", str(tiny_onnx_model), "--db", pg_url)
    no_traceback(res)
    assert res.exit_code == 0, res.output
    (_, name, status), = scan_rows(pg_url)
    assert status == "completed" and len(name) == 255 and name.startswith("aaaa") and "…" in name
    res = invoke("scan", str(folder), "--model", str(tiny_onnx_model), "--db", pg_url, "--name", "n" * 256)
    no_traceback(res)
    assert res.exit_code == 2 and "at most 255 characters" in res.output
    assert len(scan_rows(pg_url)) == 1


def test_default_name_keeps_the_count_and_timestamp():
    source = ScanSource(("/x/" + "b" * 300, "/y"))
    name = source.default_name(now=T0)
    assert len(name) == 255 and name.endswith("…+1 2026-01-01T00:00Z")
    assert ScanSource(("/photos",)).default_name(now=T0) == "photos 2026-01-01T00:00Z"


@pytest.mark.parametrize("args, message", [
    (["results", "--scan", "99999999999999999999"], "not in the range"),
    (["results", "--scan", "0"], "not in the range"),
    (["results", "--limit", "-1"], "not in the range"),
    (["report", "99999999999999999999", "--out", "x.html"], "not in the range"),
])  # fmt: skip
def test_out_of_range_numbers_are_usage_errors(db_url, args, message):
    res = invoke(*args, "--db", db_url)
    no_traceback(res)
    assert res.exit_code == 2 and message in res.output


def test_negative_threads_are_refused(tmp_path, tiny_onnx_model, sqlite_url):
    write_jpegs(tmp_path / "imgs", 1)
    res = invoke("scan", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model), "--db", sqlite_url, "--threads", "-3")
    no_traceback(res)
    assert res.exit_code == 1 and "thread count must be 0" in res.output
    with pytest.raises(SettingsError):
        from_env({"DFSCAN_THREADS": "-3"}, intra_op_threads=-3)


def test_results_for_a_missing_scan_says_so(db_url):
    res = invoke("results", "--db", db_url, "--scan", "99")
    no_traceback(res)
    assert res.exit_code == 1 and res.output.strip() == "Error: scan 99 does not exist"


def _fill(url: str, paths: list[str]) -> int:
    engine = db.make_engine(url)
    db.upgrade(engine)
    try:
        with db.session_factory(engine)() as session:
            model_id = db.get_or_create_model(session, sha256="0" * 64, name="m", path="/m.onnx", info={})
            scan_id = db.create_scan(session, name="s", roots=["/data"], model_id=model_id, threshold=0.5, settings={})
            rows = [db.ResultRow(path=p, size=1, mtime=1.0, status="ok", label="real", p_fake=0.1, confidence=0.9,
                                 error=None, error_code=None, scanned_at=T0) for p in paths]
            db.write_batch(session, scan_id=scan_id, model_id=model_id, rows=rows)
            db.finish_scan(session, scan_id=scan_id, status="completed")
            session.commit()
    finally:
        engine.dispose()
    return scan_id


def test_results_into_a_closed_pipe_ends_quietly(tmp_path, sqlite_url):
    _fill(sqlite_url, [f"/data/{i:06d}-{'x' * 60}.jpg" for i in range(3000)])  # well over a pipe's 64 KiB
    for fmt in ("table", "csv", "json"):
        proc = subprocess.Popen([str(DFSCAN), "results", "--db", sqlite_url, "--format", fmt],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout.readline()
        proc.stdout.close()  # as `| head -1` does
        stderr = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 141 and stderr == "", stderr


def test_table_escapes_control_characters(sqlite_url):
    nasty = "/data/\x1b[2Jclear\rover\nline\x07.jpg"
    _fill(sqlite_url, [nasty, "/data/plain.jpg"])
    res = invoke("results", "--db", sqlite_url)
    assert res.exit_code == 0
    table = res.output
    assert not any(c in table for c in "\x1b\r\x07") and table.count("\n") == 3
    assert "/data/\\x1b[2Jclear\\rover\\nline\\x07.jpg" in table
    csv_out = invoke("results", "--db", sqlite_url, "--format", "csv").output
    assert nasty in csv_out  # machine formats keep the name exactly (quoted)


def test_metrics_bind_address(monkeypatch):
    assert Settings().metrics_bind == "127.0.0.1"
    assert from_env({"DFSCAN_METRICS_BIND": "0.0.0.0"}).metrics_bind == "0.0.0.0"
    server = start_metrics_server(0)
    try:
        assert server.address == "127.0.0.1"
    finally:
        server.close()
    assert "--metrics-bind" in invoke("worker", "--help").output
