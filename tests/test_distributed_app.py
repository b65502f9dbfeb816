"""The Celery app, the schedule file, retries, back-pressure, resume and cancel of the distributed mode."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner
from sqlalchemy.exc import IntegrityError, OperationalError

from dfscan.db.retry import retry_db
from dfscan.cli import main
from dfscan.core.settings import Settings, SettingsError, from_env
from dfscan.workers.fleet.schedule import ScheduleError, beat_schedule, load_schedule
from tests._cluster import REPO, Worker, wait_for
from tests._images import write_jpegs
from tests._models import tiny_onnx_model  # noqa: F401 - fixture
from tests.test_distributed import assert_exactly_once, chunks, query, scan_status, wait_complete

PY = sys.executable


# --- the app ---------------------------------------------------------------------------


def test_app_configuration_is_at_least_once_and_json_only():
    from kombu.exceptions import ContentDisallowed
    from kombu.serialization import loads

    from dfscan.workers.fleet.app import SCORE_TASK, create_app

    app = create_app(Settings(broker_url="redis://127.0.0.1:1/0", visibility_timeout=77))
    conf = app.conf
    assert conf.task_serializer == "json" and conf.accept_content == ["json"] and conf.result_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == 77
    assert conf.task_ignore_result and conf.broker_connection_retry_on_startup
    assert SCORE_TASK in app.tasks and app.tasks[SCORE_TASK].acks_late
    # What a worker does with a pickled message under this configuration: refuse it.
    with pytest.raises(ContentDisallowed):
        loads(pickle.dumps({"x": 1}), "application/x-python-serialize", "binary", accept=conf.accept_content)


def test_app_needs_a_broker():
    from dfscan.workers.fleet.app import create_app

    with pytest.raises(SettingsError, match="no broker"):
        create_app(Settings())


def test_import_workers_loads_no_runtime_and_celery_finds_the_app():
    code = (
        "import sys, workers\n"
        "from celery.app.utils import find_app\n"
        "app = find_app('dfscan.workers')\n"
        "assert type(app).__name__ == 'DfscanCelery', app\n"
        "assert app.conf.broker_url == 'redis://127.0.0.1:9/3'\n"
        "assert 'dfscan.score_chunk' in app.tasks\n"
        "heavy = [m for m in ('onnxruntime', 'torch', 'tensorrt', 'dfscan.workers.scoring.context', 'nvidia.dali') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "DFSCAN_BROKER_URL": "redis://127.0.0.1:9/3"}
    result = subprocess.run([PY, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_settings_validate_distributed_fields():
    with pytest.raises(SettingsError):
        Settings(visibility_timeout=0)
    with pytest.raises(SettingsError):
        from_env({"DFSCAN_DB_RETRY_SECONDS": "-1"})
    assert from_env({"DFSCAN_VISIBILITY_TIMEOUT": "90"}).visibility_timeout == 90


# --- retries ---------------------------------------------------------------------------


def test_retry_db_retries_transient_errors_only():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("server closed the connection"))
        return "ok"

    assert retry_db(flaky, deadline_s=10, sleep=lambda s: None) == "ok" and len(calls) == 3

    def broken():
        calls.append(1)
        raise IntegrityError("INSERT", {}, ValueError("duplicate key"))

    calls.clear()
    with pytest.raises(IntegrityError):
        retry_db(broken, deadline_s=10, sleep=lambda s: None)
    assert len(calls) == 1

    def down():
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))

    with pytest.raises(OperationalError):
        retry_db(down, deadline_s=0.3, first_delay_s=0.05)


# --- schedules -------------------------------------------------------------------------


def test_schedule_file(tmp_path):
    path = tmp_path / "nightly.toml"
    path.write_text(
        '[[scan]]\nname = "archive"\ncron = "30 2 * * *"\nroots = ["/data/archive"]\nmodel = "/m/model.onnx"\n'
        'extensions = "jpg,png"\n\n'
        '[[scan]]\nname = "uploads"\ncron = "0 */6 * * 1-5"\npaths_from = "/lists/new.txt"\nmodel = "/m/model.onnx"\n'
    )
    entries = load_schedule(path)
    assert [e.name for e in entries] == ["archive", "uploads"]
    assert entries[0].extensions == (".jpg", ".png")
    schedule = beat_schedule(entries)
    assert schedule["archive"]["task"] == "dfscan.scheduled_scan"
    cron = schedule["archive"]["schedule"]
    assert cron.hour == {2} and cron.minute == {30}
    json.dumps(schedule["uploads"]["kwargs"])  # the message is JSON
    result = CliRunner().invoke(main, ["beat", "--schedule", str(path), "--check"])
    assert result.exit_code == 0 and "archive" in result.output

    path.write_text('[[scan]]\nname = "x"\ncron = "61 * * * *"\nroots = ["/d"]\nmodel = "/m"\n')
    with pytest.raises(ScheduleError, match="cron"):
        load_schedule(path)
    path.write_text('[[scan]]\nname = "x"\ncron = "* * * * *"\nroot = ["/d"]\nmodel = "/m"\n')
    with pytest.raises(ScheduleError, match="unknown keys"):
        load_schedule(path)


# --- back-pressure, resume, cancel (real Redis and workers, SQLite results) ------------


@pytest.fixture
def worker_factory(tmp_path):
    started = []

    def start(broker, url, **kw):
        w = Worker(broker, url, tmp_path, name=f"w{len(started)}", **kw)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def test_back_pressure_then_resume_after_the_producer_stopped(tmp_path, redis_server, worker_factory, tiny_onnx_model,
                                                               sqlite_url):
    from dfscan.workers.fleet.producer import Producer
    from dfscan.scanner import ScanSource, WalkOptions

    paths = sorted(str(p) for p in write_jpegs(tmp_path / "arc", 40, size=(64, 64)))
    settings = from_env(db_url=sqlite_url, broker_url=redis_server.url(), model=tiny_onnx_model, chunk_size=4,
                        max_outstanding_chunks=2)
    queue = redis_server.client()
    stop = threading.Event()
    with Producer(settings, poll_s=0.05) as producer:
        scan_id = producer.register(ScanSource((str(tmp_path / "arc"),), (), WalkOptions(settings.extensions)))
        thread = threading.Thread(target=lambda: setattr(stop, "report", producer.produce(scan_id, stop=stop)))
        thread.start()
        # No worker: the producer fills its window of two chunks and waits.
        wait_for(lambda: queue.llen("dfscan") == 2, 30, "two chunks in the queue")
        time.sleep(1.0)
        assert thread.is_alive() and queue.llen("dfscan") == 2 and len(chunks(sqlite_url, scan_id)) == 2
        stop.set()  # the producer is stopped (as if killed) before its walk is done
        thread.join(30)
    assert stop.report.stopped and stop.report.chunks_total is None
    w = worker_factory(redis_server.url(), sqlite_url).wait_ready()
    result = CliRunner().invoke(main, ["resume", str(scan_id), "--broker", redis_server.url(), "--db", sqlite_url,
                                       "--wait", "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    wait_complete(sqlite_url, scan_id, [w])
    assert_exactly_once(sqlite_url, scan_id, paths)
    assert len(chunks(sqlite_url, scan_id)) == 10


def test_cancel_drops_the_remaining_chunks(tmp_path, redis_server, worker_factory, tiny_onnx_model, sqlite_url):
    write_jpegs(tmp_path / "arc", 12, size=(64, 64))
    runner = CliRunner()
    result = runner.invoke(main, ["scan", str(tmp_path / "arc"), "--model", str(tiny_onnx_model), "--db", sqlite_url,
                                  "--broker", redis_server.url(), "--chunk-size", "4", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    scan_id = json.loads(result.stdout)["scan_id"]
    assert runner.invoke(main, ["cancel", str(scan_id), "--db", sqlite_url]).exit_code == 0
    assert scan_status(sqlite_url, scan_id) == "cancelled"
    w = worker_factory(redis_server.url(), sqlite_url).wait_ready()
    wait_for(lambda: w.log().count("'cancelled'") == 3, 60, "the three chunks dropped")
    assert query(sqlite_url, "SELECT count(*) AS n FROM results")[0]["n"] == 0


def test_celery_a_workers_worker(tmp_path, redis_server, tiny_onnx_model, sqlite_url):
    """`celery -A dfscan.workers worker` runs the same app, configured from DFSCAN_* variables."""
    paths = sorted(str(p) for p in write_jpegs(tmp_path / "arc", 10, size=(64, 64)))
    env = {**os.environ, "DFSCAN_BROKER_URL": redis_server.url(), "DFSCAN_DB_URL": sqlite_url,
           "DFSCAN_INTRA_OP_THREADS": "1"}  # fmt: skip
    celery = os.path.join(os.path.dirname(PY), "celery")
    log = open(tmp_path / "celery.log", "wb")
    proc = subprocess.Popen([celery, "-A", "dfscan.workers", "worker", "--pool", "solo", "-Q", "dfscan",
                             "--without-mingle", "--without-gossip"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        result = CliRunner().invoke(main, ["scan", str(tmp_path / "arc"), "--model", str(tiny_onnx_model),
                                           "--db", sqlite_url, "--broker", redis_server.url(), "--chunk-size", "4",
                                           "--wait", "--no-progress", "--json"])  # fmt: skip
        assert result.exit_code == 0, result.output + (tmp_path / "celery.log").read_text()
        assert_exactly_once(sqlite_url, json.loads(result.stdout)["scan_id"], paths)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        log.close()
