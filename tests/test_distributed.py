"""Distributed scans under fault: real Redis, real PostgreSQL, real Celery worker processes.

Every test ends with the same check: every input file has exactly one row in
``scan_results`` for the scan, and the scan is complete.  The servers are
throwaway ones this module starts (``tests/_cluster.py``); faults inside
workers come from ``tests/_faults.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from dfscan import db
from dfscan.cli import main
from dfscan.scanner.chunks import Chunk
from tests._cluster import PostgresServer, TcpProxy, Worker, all_ready, pg_available, stop_all, wait_for
from tests._images import write_jpegs
from tests._models import tiny_onnx_model  # noqa: F401 - fixture

pytestmark = [
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
    pytest.mark.skipif(pg_available() is not None, reason=f"no PostgreSQL server binaries: {pg_available()}"),
]

CHUNK = 16
BATCH = 8
SCAN_TIMEOUT = 180


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_server():
    server = PostgresServer().init()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_db(pg_server) -> str:
    """A fresh database on the module's throwaway cluster; migrated (a copy of the cluster's migrated template)."""
    return pg_server.create_migrated_database(f"dfscan_{uuid.uuid4().hex[:10]}")


@pytest.fixture
def workers(tmp_path):
    """Start workers with ``workers(...)``; all are stopped after the test."""
    started: list[Worker] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(broker: str, url: str, **kwargs) -> Worker:
        kwargs.setdefault("name", f"w{len(started)}")
        w = Worker(broker, url, logs, **kwargs)
        started.append(w)
        return w

    yield start
    stop_all(started)


@pytest.fixture
def archive(tmp_path) -> tuple[Path, list[str]]:
    root = tmp_path / "archive"
    paths = write_jpegs(root / "a", 40) + write_jpegs(root / "b", 40, start=40, size=(96, 96))
    return root, sorted(str(p) for p in paths)


# --- helpers ---------------------------------------------------------------------------


def cli(*args: str):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def produce(root: Path, model: Path, broker: str, url: str, *extra: str) -> int:
    result = cli("scan", str(root), "--model", str(model), "--db", url, "--broker", broker,
                 "--chunk-size", str(CHUNK), "--batch-size", str(BATCH), "--json", *extra)  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["scan_id"]


def query(url: str, sql: str, **params) -> list[dict]:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def scan_status(url: str, scan_id: int) -> str:
    return query(url, "SELECT status FROM scans WHERE id = :s", s=scan_id)[0]["status"]


def wait_complete(url: str, scan_id: int, workers_: list[Worker] = (), timeout: float = SCAN_TIMEOUT) -> None:
    def done() -> bool:
        for w in workers_:
            if not w.alive():
                raise AssertionError(f"worker {w.name} died:\n{w.log()[-3000:]}")
        return scan_status(url, scan_id) != "running"

    try:
        wait_for(done, timeout, f"scan {scan_id} to complete", interval=0.2)
    except AssertionError:
        for w in workers_:
            print(f"--- worker {w.name} log tail ---\n{w.log()[-4000:]}")
        raise


def assert_exactly_once(url: str, scan_id: int, expected: list[str]) -> dict[str, dict]:
    """The check of every test: one row per input file in scan_results, and the scan complete."""
    rows = query(url, "SELECT * FROM scan_results WHERE scan_id = :s", s=scan_id)
    paths = [r["path"] for r in rows]
    duplicates = {p for p in paths if paths.count(p) > 1}
    assert not duplicates, f"paths with more than one row: {sorted(duplicates)[:5]}"
    assert sorted(paths) == sorted(expected), (
        f"missing {sorted(set(expected) - set(paths))[:5]}, unexpected {sorted(set(paths) - set(expected))[:5]}"
    )
    assert scan_status(url, scan_id) == "completed"
    scan = query(url, "SELECT total, ok, errors FROM scans WHERE id = :s", s=scan_id)[0]
    assert scan["total"] == len(expected) and scan["ok"] + scan["errors"] == len(expected)
    return {r["path"]: r for r in rows}


def chunks(url: str, scan_id: int) -> list[dict]:
    return query(url, "SELECT id, seq, status, attempts, n_paths, ok, errors FROM chunks WHERE scan_id = :s ORDER BY seq",
                 s=scan_id)  # fmt: skip


# --- the fault tests -------------------------------------------------------------------


def test_plain_scan_with_two_workers(redis_server, pg_db, workers, archive, tiny_onnx_model):
    root, expected = archive
    broker = redis_server.url()
    ws = all_ready(*[workers(broker, pg_db, name=n) for n in ("a", "b")])
    scan_id = produce(root, tiny_onnx_model, broker, pg_db)
    wait_complete(pg_db, scan_id, ws)
    rows = assert_exactly_once(pg_db, scan_id, expected)
    assert all(r["status"] == "ok" for r in rows.values())
    assert all(c["status"] == "done" and c["attempts"] == 1 for c in chunks(pg_db, scan_id))
    # Both workers took part: each logged chunks it scored.
    assert all("succeeded" in w.log() for w in ws), [w.log()[-2000:] for w in ws]
    status = cli("status", str(scan_id), "--db", pg_db, "--json")
    assert json.loads(status.stdout)["images_done"] == len(expected)


def _rows_of_queued_chunk(url: str, chunk_id: int) -> int:
    return query(url, "SELECT count(*) AS n FROM results r JOIN chunks c ON c.scan_id = r.scan_id "
                      "AND jsonb_exists(c.paths, r.path) WHERE c.id = :c AND c.status = 'queued'",
                 c=chunk_id)[0]["n"]  # fmt: skip


# A chunk commits its rows with its completion, in one transaction: killed mid-chunk, it has no row yet.
# With ``flush_rows`` (one batch) it commits batch by batch, and is killed half written: its redelivery
# then rewrites rows that are there (the COPY's fallback upsert).
@pytest.mark.parametrize("flush_rows", [None, BATCH], ids=["one-transaction", "half-written"])
def test_pool_process_killed_mid_chunk_then_restarted(redis_server, pg_db, workers, archive, tiny_onnx_model, tmp_path,
                                                      flush_rows):
    root, expected = archive
    busy = tmp_path / "busy"
    busy.mkdir()
    broker = redis_server.url()
    faults = {"slow_batch_s": 0.4, "busy_dir": str(busy)}
    if flush_rows:
        faults["flush_rows"] = flush_rows
    w = workers(broker, pg_db, faults=faults).wait_ready()
    scan_id = produce(root, tiny_onnx_model, broker, pg_db)

    def mid_chunk():
        # A pool process busy with a chunk, past its first batch (0.4 s each), the chunk not done:
        # some of its rows committed (half-written), or none yet (one-transaction).
        for f in busy.iterdir():
            try:
                chunk_id = int(f.read_text())
                age = time.time() - f.stat().st_mtime
            except (OSError, ValueError):
                continue
            n = _rows_of_queued_chunk(pg_db, chunk_id)
            if (0 < n < CHUNK) if flush_rows else (n == 0 and 0.45 < age < 0.75):
                if query(pg_db, "SELECT status FROM chunks WHERE id = :c", c=chunk_id)[0]["status"] == "queued":
                    return int(f.name), chunk_id
        return None

    pid, chunk_id = wait_for(mid_chunk, 60, "a chunk half scored", interval=0.05)
    assert pid in w.children()
    os.kill(pid, signal.SIGKILL)
    wait_complete(pg_db, scan_id, [w])
    assert_exactly_once(pg_db, scan_id, expected)
    killed = next(c for c in chunks(pg_db, scan_id) if c["id"] == chunk_id)
    assert killed["status"] == "done" and killed["attempts"] == 2  # redelivered once, then scored
    assert pid not in w.children()  # Celery replaced the pool process


def test_worker_killed_after_commit_before_ack(redis_server, pg_db, workers, archive, tiny_onnx_model, tmp_path):
    root, expected = archive
    marker = tmp_path / "committed"
    broker = redis_server.url()
    env = {"DFSCAN_VISIBILITY_TIMEOUT": "4"}
    a = workers(broker, pg_db, name="a", env=env, faults={"hang_after_commit_seq": 1, "marker": str(marker)}).wait_ready()
    scan_id = produce(root, tiny_onnx_model, broker, pg_db)
    wait_for(marker.exists, 60, "the chunk's commit")
    chunk_id = int(marker.read_text())
    assert next(c for c in chunks(pg_db, scan_id) if c["id"] == chunk_id)["status"] == "done"
    assert redis_server.client().hlen("unacked") >= 1  # its message is still unacknowledged
    a.kill_group(signal.SIGKILL)
    b = workers(broker, pg_db, name="b", env=env).wait_ready()
    wait_complete(pg_db, scan_id, [b])
    # The lost message comes back after the visibility timeout and is found done.
    wait_for(lambda: next(c for c in chunks(pg_db, scan_id) if c["id"] == chunk_id)["attempts"] == 2, 60,
             "the unacknowledged chunk to be delivered again")
    assert_exactly_once(pg_db, scan_id, expected)
    wait_for(lambda: redis_server.client().hlen("unacked") == 0, 30, "every message acknowledged")


def test_whole_worker_killed_mid_chunk_its_lease_runs_out(redis_server, pg_db, workers, archive, tiny_onnx_model,
                                                         tmp_path):
    """A worker host lost mid-chunk (SIGKILL of the Celery parent and its pool): the other worker's reaper
    re-enqueues the chunk once its lease runs out, long before the visibility timeout (left at 3600 s)."""
    root, expected = archive
    busy = tmp_path / "busy"
    busy.mkdir()
    broker = redis_server.url()
    lease = 10
    env = {"DFSCAN_LEASE_SECONDS": str(lease), "DFSCAN_LEASE_RENEW_SECONDS": "1"}
    faults = {"slow_batch_s": 0.4, "busy_dir": str(busy), "flush_rows": BATCH}  # commit batch by batch
    a, b = all_ready(workers(broker, pg_db, name="a", env=env, faults=faults),
                     workers(broker, pg_db, name="b", env=env, faults=faults))
    scan_id = produce(root, tiny_onnx_model, broker, pg_db)

    def a_half_written():
        # One of a's pool processes is busy with a chunk of which some, not all, rows are committed.
        for pid in a.children():
            try:
                chunk_id = int((busy / str(pid)).read_text())
            except (OSError, ValueError):
                continue
            if 0 < _rows_of_queued_chunk(pg_db, chunk_id) < CHUNK:
                return chunk_id
        return None

    chunk_id = wait_for(a_half_written, 60, "a chunk half written by worker a", interval=0.05)
    holder = query(pg_db, "SELECT lease_owner, lease_until FROM chunks WHERE id = :c", c=chunk_id)[0]
    assert holder["lease_owner"].endswith(f":{a.children()[0]}") and holder["lease_until"] is not None
    a.kill_group(signal.SIGKILL)
    killed_at = time.monotonic()
    wait_complete(pg_db, scan_id, [b], timeout=3 * lease)
    took = time.monotonic() - killed_at
    print(f"scan completed {took:.1f} s after the SIGKILL of a whole worker (lease {lease} s)")
    assert_exactly_once(pg_db, scan_id, expected)
    killed = query(pg_db, "SELECT status, requeues, requeued_at, lease_expired_at, attempts FROM chunks "
                          "WHERE id = :c", c=chunk_id)[0]  # fmt: skip
    # Re-enqueued once (b's reaper), scored by b: two deliveries.
    assert killed["status"] == "done" and killed["requeues"] == 1 and killed["attempts"] == 2
    assert killed["lease_expired_at"] <= killed["requeued_at"]
    assert all(c["requeues"] == 0 for c in query(pg_db, "SELECT requeues FROM chunks WHERE scan_id = :s AND id <> :c",
                                                  s=scan_id, c=chunk_id))  # fmt: skip
    # The visibility timeout did not do it: the killed worker's message is still unacknowledged.
    assert redis_server.client().hlen("unacked") >= 1
    status = cli("status", str(scan_id), "--db", pg_db)
    assert status.exit_code == 0 and "1 re-enqueues" in status.stdout, status.stdout
    listed = json.loads(cli("status", str(scan_id), "--db", pg_db, "--json").stdout)["expired_leases"]
    assert [(r["status"], r["requeues"]) for r in listed] == [("done", 1)]
    # The stale original, delivered now, finds the chunk done and changes nothing.
    paths = query(pg_db, "SELECT seq, paths FROM chunks WHERE id = :c", c=chunk_id)[0]
    from dfscan.core.settings import from_env
    from dfscan.workers.fleet.producer import Producer

    with Producer(from_env(db_url=pg_db, broker_url=broker)) as producer:
        producer.publish(Chunk(scan_id, paths["seq"], tuple(paths["paths"]), chunk_id))
    wait_for(lambda: query(pg_db, "SELECT attempts FROM chunks WHERE id = :c", c=chunk_id)[0]["attempts"] == 3, 30,
             "the stale copy delivered")
    assert_exactly_once(pg_db, scan_id, expected)


def test_redis_restarted_mid_scan_then_resume(redis_server, pg_db, workers, archive, tiny_onnx_model):
    root, expected = archive
    broker = redis_server.url()
    w = workers(broker, pg_db, faults={"slow_batch_s": 0.3}).wait_ready()
    scan_id = produce(root, tiny_onnx_model, broker, pg_db, "--max-outstanding", "100")
    wait_for(lambda: any(c["status"] == "done" for c in chunks(pg_db, scan_id)), 60, "a first chunk")
    redis_server.restart()  # every queued message is lost
    # The worker reconnects and declares its queue again (kombu's binding keys),
    # but no message survived: the queue and the unacked set are empty.
    client = redis_server.client()
    assert client.llen("dfscan") == 0 and client.hlen("unacked") == 0
    time.sleep(3)  # the worker finishes or drops what it held; nothing more arrives
    assert scan_status(pg_db, scan_id) == "running"
    assert any(c["status"] == "queued" for c in chunks(pg_db, scan_id))
    result = cli("resume", str(scan_id), "--broker", broker, "--db", pg_db)
    assert result.exit_code == 0, result.output
    wait_complete(pg_db, scan_id, [w])
    assert_exactly_once(pg_db, scan_id, expected)


@pytest.mark.parametrize("outage", ["proxy-cut", "server-restart"])
def test_postgres_unreachable_mid_scan(redis_server, pg_server, pg_db, workers, archive, tiny_onnx_model, outage):
    root, expected = archive
    broker = redis_server.url()
    proxy = TcpProxy(pg_server.port)
    try:
        via_proxy = pg_db.replace(f":{pg_server.port}/", f":{proxy.port}/")
        w = workers(broker, via_proxy, faults={"slow_batch_s": 0.2}).wait_ready()
        scan_id = produce(root, tiny_onnx_model, broker, pg_db, "--max-outstanding", "100")
        wait_for(lambda: any(c["status"] == "done" for c in chunks(pg_db, scan_id)), 60, "a first chunk")
        if outage == "proxy-cut":
            proxy.cut()
            time.sleep(4)
            proxy.restore()
        else:
            pg_server.stop("fast")
            time.sleep(3)
            pg_server.start()
        wait_complete(pg_db, scan_id, [w])
        assert_exactly_once(pg_db, scan_id, expected)
        assert "retrying" in w.log()  # the outage hit the worker's writes, which were retried
    finally:
        proxy.close()


def test_poison_chunk_ends_as_error_rows(redis_server, pg_db, workers, archive, tiny_onnx_model):
    root, expected = archive
    poison = write_jpegs(root / "a", 1, start=999)[0].rename(root / "a" / "img_00005_POISON.jpg")
    expected = sorted(expected + [str(poison)])
    broker = redis_server.url()
    w = workers(broker, pg_db, faults={"poison": "_POISON."}, env={"DFSCAN_MAX_ATTEMPTS": "2"}).wait_ready()
    scan_id = produce(root, tiny_onnx_model, broker, pg_db)
    wait_complete(pg_db, scan_id, [w])
    rows = assert_exactly_once(pg_db, scan_id, expected)
    assert rows[str(poison)]["status"] == "error"
    failed = [c for c in chunks(pg_db, scan_id) if c["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["attempts"] == 3  # two deliveries killed it, the third closed it
    lost = query(pg_db, "SELECT path FROM results WHERE scan_id = :s AND error_code = 'worker-lost'", s=scan_id)
    assert str(poison) in {r["path"] for r in lost}
    others = [r for p, r in rows.items() if p != str(poison)]
    assert all(r["status"] == "ok" or r["path"] in {x["path"] for x in lost} for r in others)
    assert w.log().count("WorkerLostError") >= 2 or w.log().count("signal 9") >= 2


def test_same_chunk_delivered_twice(redis_server, pg_db, workers, archive, tiny_onnx_model):
    root, expected = archive
    broker = redis_server.url()
    scan_id = produce(root, tiny_onnx_model, broker, pg_db, "--max-outstanding", "100")
    # Every chunk is in the queue; publish each one a second time, then start two workers.
    from dfscan.core.settings import from_env
    from dfscan.workers.fleet.producer import Producer

    with Producer(from_env(db_url=pg_db, broker_url=broker)) as producer:
        for c in query(pg_db, "SELECT id, seq, paths FROM chunks WHERE scan_id = :s", s=scan_id):
            paths = c["paths"] if isinstance(c["paths"], list) else json.loads(c["paths"])
            producer.publish(Chunk(scan_id, c["seq"], tuple(paths), c["id"]))
    assert redis_server.client().llen("dfscan") == 2 * len(chunks(pg_db, scan_id))
    ws = all_ready(*[workers(broker, pg_db, name=n) for n in ("a", "b")])
    wait_complete(pg_db, scan_id, ws)
    client = redis_server.client()
    wait_for(lambda: client.llen("dfscan") == 0 and client.hlen("unacked") == 0, 60,
             "every duplicate delivered and acknowledged")
    assert_exactly_once(pg_db, scan_id, expected)
    for c in chunks(pg_db, scan_id):
        assert c["status"] == "done" and c["ok"] + c["errors"] == c["n_paths"]
        # A copy that finds the chunk done counts as a delivery; one that arrives while the
        # other worker holds the chunk's lease is dropped uncounted (issue 11's leases).
        assert 1 <= c["attempts"] <= 2, c


def test_incremental_rescan_scores_only_new_and_changed(redis_server, pg_db, workers, archive, tiny_onnx_model):
    root, expected = archive
    broker = redis_server.url()
    w = workers(broker, pg_db).wait_ready()
    first = produce(root, tiny_onnx_model, broker, pg_db)
    wait_complete(pg_db, first, [w])
    assert_exactly_once(pg_db, first, expected)

    added = [str(p) for p in write_jpegs(root / "c", 5, start=500)]
    modified = expected[3]
    write_jpegs(Path(modified).parent, 1, start=777)[0].replace(modified)
    os.utime(modified, (time.time() + 5, time.time() + 5))
    result = cli("scan", str(root), "--model", str(tiny_onnx_model), "--db", pg_db, "--broker", broker,
                 "--chunk-size", str(CHUNK), "--incremental", "--wait", "--no-progress", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["skipped"] == len(expected) - 1
    second = report["scan_id"]
    assert_exactly_once(pg_db, second, sorted(added + [modified]))


# --- without faults: configuration and the embedded incremental mode -------------------


def test_embedded_incremental(tmp_path, archive, tiny_onnx_model, sqlite_url):
    root, expected = archive
    args = ("scan", str(root), "--model", str(tiny_onnx_model), "--db", sqlite_url, "--chunk-size", str(CHUNK),
            "--json")  # fmt: skip
    first = json.loads(cli(*args).stdout)
    assert first["total"] == len(expected)
    added = write_jpegs(root / "new", 2, start=300)
    second = json.loads(cli(*args, "--incremental").stdout)
    assert second["skipped"] == len(expected) and second["total"] == 2
    rows = query(sqlite_url, "SELECT path FROM scan_results WHERE scan_id = :s", s=second["scan_id"])
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in added)


def test_worker_serves_prometheus_metrics(redis_server, pg_db, workers, archive, tiny_onnx_model):
    """A real worker with --metrics-port: the endpoint's counts match the rows it wrote."""
    import re
    import urllib.request

    from tests._cluster import free_port

    root, expected = archive
    broker = redis_server.url()
    port = free_port()
    w = workers(broker, pg_db, name="m", env={"DFSCAN_METRICS_PORT": str(port)}).wait_ready()
    scan_id = produce(root, tiny_onnx_model, broker, pg_db)
    wait_complete(pg_db, scan_id, [w])
    assert_exactly_once(pg_db, scan_id, expected)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    scored = sum(float(v) for v in re.findall(r'^dfscan_images_scored_total\{label="\w+"\} (\S+)$', body, re.M))
    assert scored == len(expected), body[:2000]
    assert re.search(r'^dfscan_queue_depth\{queue="dfscan"\} 0\.0$', body, re.M), body[:2000]
    assert re.search(r"^dfscan_inference_seconds_count(\{.*\})? [1-9]", body, re.M), body[:2000]


def test_each_worker_process_is_recorded_with_its_runtime(redis_server, pg_db, workers, archive, tiny_onnx_model):
    root, expected = archive
    broker = redis_server.url()
    ws = all_ready(*[workers(broker, pg_db, name=n) for n in ("a", "b")])
    scan_id = produce(root, tiny_onnx_model, broker, pg_db)
    wait_complete(pg_db, scan_id, ws)
    assert_exactly_once(pg_db, scan_id, expected)
    procs = query(pg_db, "SELECT pid, runtime, runtime_version, decoder FROM scan_workers WHERE scan_id = :s", s=scan_id)
    pool_pids = {pid for w in ws for pid in w.children()}
    assert procs and {p["pid"] for p in procs} <= pool_pids
    assert all(p["runtime"] == "onnxruntime" and p["runtime_version"] and p["decoder"] == "pillow" for p in procs)
    audit = query(pg_db, "SELECT settings FROM scans WHERE id = :s", s=scan_id)[0]["settings"]
    assert audit["user"] and audit["host"] and audit["command"] and audit["model_sha256"]


def test_beat_runs_a_scheduled_incremental_scan(redis_server, pg_db, workers, archive, tiny_onnx_model, tmp_path):
    """A live `dfscan beat` with an every-minute entry: a producer worker walks, a scoring worker scores."""
    import subprocess

    from tests._cluster import DFSCAN, REPO

    root, expected = archive
    broker = redis_server.url()
    schedule = tmp_path / "nightly.toml"
    schedule.write_text(
        f'[[scan]]\nname = "every-minute"\ncron = "* * * * *"\nroots = ["{root}"]\nmodel = "{tiny_onnx_model}"\n'
        f"chunk_size = {CHUNK}\n"
    )
    # Beat first, the two workers beside it: they start while beat waits for the minute to turn (the entry's
    # message waits in Redis if it turns first), rather than one after the other before it.
    log = open(tmp_path / "beat.log", "wb")
    beat = subprocess.Popen(
        [DFSCAN, "beat", "--schedule", str(schedule), "--broker", broker, "--db", pg_db,
         "--state", str(tmp_path / "beat-state.db")],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        scorer, walker = all_ready(workers(broker, pg_db, name="score"),
                                   workers(broker, pg_db, name="walk", env={"DFSCAN_QUEUES": "dfscan.producer"}))

        def scan_done():
            rows = query(pg_db, "SELECT id, status FROM scans WHERE name LIKE 'every-minute%' ORDER BY id")
            return rows[0]["id"] if rows and rows[0]["status"] == "completed" else None

        scan_id = wait_for(scan_done, 150, "the scheduled scan to complete", interval=0.25)
    finally:
        beat.terminate()
        beat.wait(timeout=30)
        log.close()
    assert_exactly_once(pg_db, scan_id, expected)
    audit = query(pg_db, "SELECT settings FROM scans WHERE id = :s", s=scan_id)[0]["settings"]
    assert audit["incremental"] is True
    assert scorer.alive() and walker.alive()


def test_celery_inspect_and_events_reach_a_dfscan_worker(redis_server, pg_db, workers, archive, tiny_onnx_model):
    """Celery's own monitoring (what Flower builds on) works with the worker app: remote control and events."""
    import subprocess
    import threading

    from dfscan.core.settings import Settings
    from tests._cluster import REPO
    from dfscan.workers.fleet.app import create_app

    root, expected = archive
    broker = redis_server.url()
    w = workers(broker, pg_db, name="mon", env={"DFSCAN_EVENTS": "1"}).wait_ready()
    celery = os.path.join(os.path.dirname(sys.executable), "celery")
    env = {**os.environ, "DFSCAN_BROKER_URL": broker}
    ping = subprocess.run([celery, "-A", "dfscan.workers", "inspect", "ping", "--timeout", "10", "--json"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert any(name.startswith("mon-") for name in json.loads(ping.stdout)), ping.stdout

    app = create_app(Settings(broker_url=broker, db_url=pg_db))
    seen: list[str] = []
    receivers = []

    def on_event(event: dict) -> None:
        seen.append(event["type"])
        if event["type"] == "task-succeeded":
            receivers[0].should_stop = True

    def capture() -> None:
        with app.connection() as conn:
            receivers.append(app.events.Receiver(conn, handlers={"*": on_event}))
            try:
                receivers[0].capture(limit=None, timeout=60, wakeup=True)
            except Exception:  # noqa: BLE001 - a timeout leaves `seen` without the event: the assert says so
                pass

    listener = threading.Thread(target=capture, daemon=True)
    listener.start()
    time.sleep(1)
    scan_id = produce(root, tiny_onnx_model, broker, pg_db)
    wait_complete(pg_db, scan_id, [w])
    assert_exactly_once(pg_db, scan_id, expected)
    listener.join(60)
    assert "task-succeeded" in seen, seen
    assert "worker-heartbeat" in seen or "task-received" in seen
