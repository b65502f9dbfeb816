"""Worker metrics: real batches from the real pipeline, scraped over HTTP from a real endpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from dfscan import db
from dfscan.core.settings import Settings
from dfscan.scanner import Chunk
from tests._images import write_bad_files, write_jpegs
from tests._models import tiny_onnx_model  # noqa: F401 - fixture
from dfscan.workers.scoring.context import ScanContext
from dfscan.workers.reading.errors import REASONS
from dfscan.workers.fleet.metrics import WorkerMetrics, batch_hook, redis_queue_depth, start_metrics_server
from dfscan.workers.scoring.loop import score_chunk

REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parent.parent


def parse(body: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}``, parsed by prometheus_client's own parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return parse(response.read().decode())


def db_counts(url: str, scan_id: int) -> tuple[Counter, Counter]:
    engine = db.make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT status, label, error_code FROM results WHERE scan_id = :s"), {"s": scan_id}).all()
    engine.dispose()
    return Counter(r.label for r in rows if r.status == "ok"), Counter(r.error_code for r in rows if r.status == "error")


def _open_chunk(ctx: ScanContext, paths: list[str]) -> tuple[Chunk, int]:
    model_id = ctx.register_model()
    with ctx.sessions.begin() as s:
        scan_id = db.create_scan(s, name="metrics", roots=[], model_id=model_id, threshold=0.5, settings={})
        chunk_id = db.add_chunk(s, scan_id=scan_id, seq=0, paths=paths)
    return Chunk(scan_id, 0, tuple(paths), chunk_id), model_id


@pytest.fixture
def chunk_of_files(tmp_path) -> list[str]:
    """11 paths, 3 batches of 4: four good; three good and one bad; three bad."""
    good = [str(p) for p in write_jpegs(tmp_path / "imgs", 7)]
    bad = [str(p) for p, _ in write_bad_files(tmp_path / "bad").values()]
    return good + bad


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


def test_endpoint_counts_what_the_pipeline_wrote(tiny_onnx_model, sqlite_url, chunk_of_files):
    metrics = WorkerMetrics()
    server = start_metrics_server(0, "127.0.0.1", metrics=metrics)
    ctx = ScanContext.open(Settings(db_url=sqlite_url, model=tiny_onnx_model, batch_size=4))
    try:
        hook = batch_hook(metrics)
        chunk, model_id = _open_chunk(ctx, chunk_of_files)
        before = scrape(server.url)
        result = score_chunk(ctx, chunk, model_id, on_batch=hook)
        after = scrape(server.url)
    finally:
        ctx.close()
        server.close()

    # Every series exists before the first batch, at zero.
    assert {before[("dfscan_images_scored_total", (("label", label),))] for label in ("real", "fake")} == {0.0}
    assert all(before[("dfscan_image_errors_total", (("reason", r),))] == 0.0 for r in REASONS)
    assert before[("dfscan_batches_total", ())] == 0.0

    labels, reasons = db_counts(sqlite_url, chunk.scan_id)
    assert result.total == len(chunk_of_files) and result.errors == 4
    assert sum(reasons.values()) == 4 and sum(labels.values()) == 7
    for label in ("real", "fake"):
        assert after[("dfscan_images_scored_total", (("label", label),))] == labels[label]
    for reason in REASONS:
        assert after[("dfscan_image_errors_total", (("reason", reason),))] == reasons[reason], reason

    assert after[("dfscan_batches_total", ())] == 3
    assert after[("dfscan_batch_images_count", ())] == 3
    assert after[("dfscan_batch_images_sum", ())] == len(chunk_of_files)
    # The third batch holds three bad files only: read and decoded, never inferred.
    for histogram, count in (("dfscan_batch_seconds", 3), ("dfscan_decode_seconds", 3), ("dfscan_inference_seconds", 2)):
        assert after[(f"{histogram}_count", ())] == count, histogram
        assert after[(f"{histogram}_sum", ())] > 0, histogram
        assert after[(f"{histogram}_bucket", (("le", "+Inf"),))] == count, histogram
    # A batch's latency runs from the start of its reading to its rows: it holds its decoding and inference.
    assert after[("dfscan_batch_seconds_sum", ())] >= after[("dfscan_decode_seconds_sum", ())]
    assert after[("dfscan_batch_seconds_sum", ())] >= after[("dfscan_inference_seconds_sum", ())]


def test_a_batch_with_nothing_decodable_has_no_inference_time(tmp_path, tiny_onnx_model, sqlite_url):
    bad = [str(p) for p, _ in write_bad_files(tmp_path / "bad").values()]
    metrics = WorkerMetrics()
    ctx = ScanContext.open(Settings(db_url=sqlite_url, model=tiny_onnx_model, batch_size=8))
    try:
        hook = batch_hook(metrics)
        chunk, model_id = _open_chunk(ctx, bad)
        score_chunk(ctx, chunk, model_id, on_batch=hook)
    finally:
        ctx.close()
    server = start_metrics_server(0, "127.0.0.1", metrics=metrics)
    try:
        got = scrape(server.url)
    finally:
        server.close()
    assert got[("dfscan_batches_total", ())] == 1
    assert got[("dfscan_decode_seconds_count", ())] == 1
    assert got[("dfscan_inference_seconds_count", ())] == 0
    assert sum(v for (name, _), v in got.items() if name == "dfscan_image_errors_total") == 4


@pytest.mark.redis
@pytest.mark.skipif(not _redis_up(), reason="no Redis server on 127.0.0.1:6379")
def test_queue_depth_is_read_from_the_broker_at_scrape_time():
    import redis
    from kombu import Connection

    queue = f"dfscan-test-metrics-{uuid.uuid4().hex[:8]}"
    metrics = WorkerMetrics()
    metrics.set_queue_depth(redis_queue_depth(REDIS_URL, [queue]))
    server = start_metrics_server(0, "127.0.0.1", metrics=metrics)
    try:
        with Connection(REDIS_URL) as conn:
            q = conn.SimpleQueue(queue, serializer="json")
            assert scrape(server.url)[("dfscan_queue_depth", (("queue", queue),))] == 0
            for i in range(5):
                q.put({"chunk": i})
            assert scrape(server.url)[("dfscan_queue_depth", (("queue", queue),))] == 5
            q.get(timeout=5).ack()
            assert scrape(server.url)[("dfscan_queue_depth", (("queue", queue),))] == 4
            q.clear()
            q.close()
    finally:
        server.close()
        redis.Redis.from_url(REDIS_URL).delete(queue)


def test_a_broker_outage_leaves_the_endpoint_up_without_a_depth():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics = WorkerMetrics()
    metrics.set_queue_depth(redis_queue_depth(f"redis://127.0.0.1:{port}/0", ["dfscan"]))
    server = start_metrics_server(0, "127.0.0.1", metrics=metrics)
    try:
        got = scrape(server.url)
    finally:
        server.close()
    assert not [k for k in got if k[0] == "dfscan_queue_depth"]
    assert ("dfscan_batches_total", ()) in got


# Two forked processes score a chunk each, as Celery's prefork children do; the
# parent serves the sum of both from the shared directory.
MULTIPROCESS_SCRIPT = r"""
import json, multiprocessing, os, sys, urllib.request
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from dfscan import db
from dfscan.core.settings import Settings
from dfscan.scanner import Chunk
from dfscan.workers.fleet.metrics import WorkerMetrics, batch_hook, mark_process_dead, start_metrics_server

model, url, paths = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])

def child(seq):
    from dfscan.workers.scoring.context import ScanContext
    from dfscan.workers.scoring.loop import score_chunk
    ctx = ScanContext.open(Settings(db_url=url, model=model, batch_size=4), migrate=False)
    try:
        hook = batch_hook(WorkerMetrics())
        model_id = ctx.register_model()
        with ctx.sessions.begin() as s:
            chunk_id = db.add_chunk(s, scan_id=1, seq=seq, paths=paths[seq])
        score_chunk(ctx, Chunk(1, seq, tuple(paths[seq]), chunk_id), model_id, on_batch=hook)
    finally:
        ctx.close()

engine = db.make_engine(url)
db.upgrade(engine)
with db.session_factory(engine).begin() as s:
    mid = db.get_or_create_model(s, sha256="0" * 64, name="placeholder", path="-", info={})
    db.create_scan(s, name="mp", roots=[], model_id=mid, threshold=0.5, settings={})
engine.dispose()
mp = multiprocessing.get_context("fork")
procs = [mp.Process(target=child, args=(i,)) for i in range(2)]
for p in procs: p.start()
for p in procs:
    p.join()
    assert p.exitcode == 0, p.exitcode
    mark_process_dead(p.pid, sys.argv[1])
server = start_metrics_server(0, "127.0.0.1", multiprocess_dir=sys.argv[1], metrics=WorkerMetrics())
print(urllib.request.urlopen(server.url, timeout=10).read().decode())
server.close()
"""


def test_prefork_children_are_summed_in_multiprocess_mode(tmp_path, tiny_onnx_model, sqlite_url):
    paths = [[str(p) for p in write_jpegs(tmp_path / "a", 5)],
             [str(p) for p in write_jpegs(tmp_path / "b", 3, start=5)] + [str(tmp_path / "gone.jpg")]]
    shared = tmp_path / "prom"
    shared.mkdir()
    env = {k: v for k, v in os.environ.items() if k.upper() != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_SCRIPT, str(shared), str(tiny_onnx_model), sqlite_url, json.dumps(paths)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = parse(done.stdout)
    assert sum(v for (name, _), v in got.items() if name == "dfscan_images_scored_total") == 8
    assert got[("dfscan_image_errors_total", (("reason", "missing"),))] == 1
    assert got[("dfscan_batches_total", ())] == 3  # batches of 4: 5 paths make 2, 4 paths make 1
    assert got[("dfscan_inference_seconds_count", ())] == 3
