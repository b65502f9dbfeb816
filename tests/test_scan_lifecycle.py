"""The scan as a process: SIGTERM finishes the batch in flight; progress goes to stderr."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from click.testing import CliRunner
from sqlalchemy import create_engine, text

from dfscan.cli import main
from tests._images import write_jpegs
from tests._models import tiny_onnx_model  # noqa: F401 - fixture


def test_sigterm_stops_after_the_batch_in_flight(tmp_path, tiny_onnx_model):
    write_jpegs(tmp_path / "imgs", 400, size=(64, 64))
    db_file = tmp_path / "sig.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dfscan.cli", "scan", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model),
         "--db", f"sqlite:///{db_file}", "--batch-size", "2", "--chunk-size", "8", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    engine = create_engine(f"sqlite:///{db_file}")
    try:
        deadline = time.monotonic() + 60
        written = 0
        while written == 0 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            try:
                with engine.connect() as conn:
                    written = conn.execute(text("SELECT count(*) FROM results")).scalar()
            except Exception:  # noqa: BLE001 - the schema may not exist yet
                pass
        assert written > 0, "the scan never wrote a row"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert "stopping after the batch in flight" in err
        assert "interrupted" in err
        with engine.connect() as conn:
            status = conn.execute(text("SELECT status FROM scans")).scalar()
            rows = conn.execute(text("SELECT count(*), count(DISTINCT path) FROM results")).one()
    finally:
        if proc.poll() is None:
            proc.kill()
        engine.dispose()
    assert status == "cancelled"
    assert rows[0] == rows[1] and 0 < rows[0] < 400
    assert rows[0] % 2 == 0  # whole batches only: nothing half-written


def test_progress_bar_goes_to_stderr(tmp_path, tiny_onnx_model):
    write_jpegs(tmp_path / "imgs", 5, size=(64, 64))
    res = CliRunner().invoke(main, ["scan", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model),
                                    "--db", f"sqlite:///{tmp_path / 'p.db'}", "--progress"])
    assert res.exit_code == 0, res.output
    assert "img/s" in res.stderr and "errors=0" in res.stderr
    assert "scan 1 completed: 5 images" in res.stdout
    assert "img/s" not in res.stdout


def test_an_interrupted_scan_is_finished_by_an_incremental_rerun(tmp_path, tiny_onnx_model):
    """What the interruption message advises: --incremental scores exactly the files not yet scored."""
    write_jpegs(tmp_path / "imgs", 300, size=(64, 64))
    url = f"sqlite:///{tmp_path / 'resume.db'}"
    args = [sys.executable, "-m", "dfscan.cli", "scan", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model),
            "--db", url, "--batch-size", "2", "--chunk-size", "8", "--threads", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    engine = create_engine(url)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            try:
                with engine.connect() as conn:
                    if conn.execute(text("SELECT count(*) FROM results")).scalar():
                        break
            except Exception:  # noqa: BLE001 - the schema may not exist yet
                pass
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert "--incremental" in err
        done = subprocess.run(args + ["--incremental", "--json"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        with engine.connect() as conn:
            first = conn.execute(text("SELECT count(*) FROM results WHERE scan_id = 1")).scalar()
            second = conn.execute(text("SELECT count(*) FROM results WHERE scan_id = 2")).scalar()
            union = conn.execute(text("SELECT count(DISTINCT path) FROM results")).scalar()
    finally:
        if proc.poll() is None:
            proc.kill()
        engine.dispose()
    assert 0 < first < 300 and first + second == 300 and union == 300
