"""Chunk leases in the database (migration 0004), on SQLite and PostgreSQL: claim, renew, release, reap.

The fault test with real workers, one of them SIGKILLed with its host in
effect, is ``tests/test_distributed.py::test_whole_worker_killed_mid_chunk_its_lease_runs_out``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from dfscan import db
from dfscan.db import utcnow
from dfscan.db.leases import (
    claim_chunk,
    clear_requeue_leases,
    lease_records,
    reap_expired_leases,
    release_lease,
    renew_lease,
)
from dfscan.db.models import Chunk
from dfscan.workers.fleet.lease import Heartbeat, Reaper, holder_alive, lease_owner

LEASE = 30


def _alive(_: str) -> bool:
    return True


def _dead(_: str) -> bool:
    return False


@pytest.fixture
def sessions(db_engine: Engine):
    return db.session_factory(db_engine)


@pytest.fixture
def chunk(sessions) -> tuple[int, int]:
    """(scan_id, chunk_id) of a running scan's queued chunk, committed."""
    with sessions.begin() as s:
        model_id = db.get_or_create_model(s, sha256="b" * 64, name="m", path="/m.onnx", info={})
        scan_id = db.create_scan(s, name="lease", roots=["/data"], model_id=model_id, threshold=0.5, settings={})
        chunk_id = db.add_chunk(s, scan_id=scan_id, seq=0, paths=["/data/a.jpg", "/data/b.jpg"])
    return scan_id, chunk_id


def _claim(sessions, chunk_id: int, owner: str, alive=_alive, now=None) -> db.ChunkStart:
    with sessions.begin() as s:
        return claim_chunk(s, chunk_id, owner=owner, lease_s=LEASE, holder_alive=alive, now=now)


def _row(sessions, chunk_id: int) -> Chunk:
    with sessions() as s:
        return s.execute(select(Chunk).where(Chunk.id == chunk_id)).scalar_one()


def test_claim_takes_the_lease_and_a_live_holder_keeps_it(sessions, chunk) -> None:
    _, chunk_id = chunk
    first = _claim(sessions, chunk_id, "host-a:1")
    assert first.leased_by is None and first.attempts == 1
    row = _row(sessions, chunk_id)
    assert row.lease_owner == "host-a:1" and row.lease_until > utcnow() + timedelta(seconds=LEASE - 5)
    # A stale copy on another worker: refused, and not counted as an attempt.
    second = _claim(sessions, chunk_id, "host-b:2")
    assert second.leased_by == "host-a:1" and _row(sessions, chunk_id).attempts == 1
    # The holder itself may claim again (a redelivery to the same process).
    assert _claim(sessions, chunk_id, "host-a:1").leased_by is None
    assert _row(sessions, chunk_id).attempts == 2


def test_a_dead_holder_or_an_expired_lease_is_taken_over(sessions, chunk) -> None:
    _, chunk_id = chunk
    _claim(sessions, chunk_id, "host-a:1")
    taken = _claim(sessions, chunk_id, "host-a:2", alive=_dead)  # a pool process of this host, killed
    assert taken.leased_by is None and _row(sessions, chunk_id).lease_owner == "host-a:2"
    later = utcnow() + timedelta(seconds=LEASE + 1)
    assert _claim(sessions, chunk_id, "host-b:3", now=later).leased_by is None
    assert _row(sessions, chunk_id).lease_owner == "host-b:3"


def test_finished_chunks_take_no_lease(sessions, chunk) -> None:
    scan_id, chunk_id = chunk
    with sessions.begin() as s:
        db.finish_chunk(s, chunk_id=chunk_id, ok=2, fake=0, real=2, errors=0)
    done = _claim(sessions, chunk_id, "host-a:1")
    assert done.status == "done" and done.leased_by is None and done.attempts == 1
    assert _row(sessions, chunk_id).lease_owner is None


def test_renew_and_release(sessions, chunk) -> None:
    _, chunk_id = chunk
    _claim(sessions, chunk_id, "host-a:1")
    later = utcnow() + timedelta(seconds=100)
    with sessions.begin() as s:
        assert renew_lease(s, chunk_id, owner="host-a:1", lease_s=LEASE, now=later)
        assert not renew_lease(s, chunk_id, owner="host-b:1", lease_s=LEASE)
    assert _row(sessions, chunk_id).lease_until > later
    with sessions.begin() as s:
        release_lease(s, chunk_id, owner="host-a:1")
    row = _row(sessions, chunk_id)
    assert row.lease_until is None and row.lease_owner == "host-a:1"
    # A released lease is free for the next delivery.
    assert _claim(sessions, chunk_id, "host-b:1").leased_by is None


def test_reaper_requeues_an_expiry_once(sessions, chunk) -> None:
    scan_id, chunk_id = chunk
    _claim(sessions, chunk_id, "host-a:1")
    with sessions.begin() as s:
        assert reap_expired_leases(s, reaper="r1", lease_s=LEASE) == []  # the lease is live
    after = utcnow() + timedelta(seconds=LEASE + 1)
    with sessions.begin() as s:
        reaped = reap_expired_leases(s, reaper="r1", lease_s=LEASE, now=after)
    assert [(r.chunk_id, r.seq, r.expired_owner) for r in reaped] == [(chunk_id, 0, "host-a:1")]
    assert reaped[0].paths == ["/data/a.jpg", "/data/b.jpg"]
    with sessions.begin() as s:  # a second reaper, a moment later: nothing left to do
        assert reap_expired_leases(s, reaper="r2", lease_s=LEASE, now=after + timedelta(seconds=1)) == []
    row = _row(sessions, chunk_id)
    assert row.requeues == 1 and row.requeued_at == after and row.lease_expired_at < after
    with sessions() as s:
        (record,) = lease_records(s, scan_id, now=after)
    assert (record.seq, record.requeues, record.expired) == (0, 1, False)
    # While the reaper publishes, or after, a worker takes the chunk over.
    assert _claim(sessions, chunk_id, "host-c:1", now=after).leased_by is None
    with sessions.begin() as s:
        clear_requeue_leases(s, [chunk_id], reaper="r1")  # the worker's lease is not the reaper's: kept
    assert _row(sessions, chunk_id).lease_owner == "host-c:1" and _row(sessions, chunk_id).lease_until is not None


def test_requeued_chunk_waits_in_the_queue_unleased(sessions, chunk) -> None:
    scan_id, chunk_id = chunk
    _claim(sessions, chunk_id, "host-a:1")
    after = utcnow() + timedelta(seconds=LEASE + 1)
    with sessions.begin() as s:
        reap_expired_leases(s, reaper="r1", lease_s=LEASE, now=after)
    with sessions.begin() as s:
        clear_requeue_leases(s, [chunk_id], reaper="r1")
    # However long the queue, a chunk waiting for a worker is never reaped again.
    much_later = after + timedelta(hours=5)
    with sessions.begin() as s:
        assert reap_expired_leases(s, reaper="r2", lease_s=LEASE, now=much_later) == []
    with sessions() as s:
        assert [r.expired for r in lease_records(s, scan_id, now=much_later)] == [False]


def test_expired_lease_shows_before_any_reaper_ran(sessions, chunk) -> None:
    scan_id, chunk_id = chunk
    _claim(sessions, chunk_id, "host-a:1")
    with sessions() as s:
        assert lease_records(s, scan_id) == []
        (record,) = lease_records(s, scan_id, now=utcnow() + timedelta(seconds=LEASE + 1))
    assert record.expired and record.lease_owner == "host-a:1" and record.requeues == 0


def test_cancelled_scans_are_not_reaped(sessions, chunk) -> None:
    scan_id, chunk_id = chunk
    _claim(sessions, chunk_id, "host-a:1")
    with sessions.begin() as s:
        db.cancel_scan(s, scan_id)
        assert reap_expired_leases(s, reaper="r", lease_s=LEASE, now=utcnow() + timedelta(hours=1)) == []


@pytest.mark.postgres
def test_racing_reapers_requeue_each_expiry_once(pg_url: str) -> None:
    """Eight reapers in threads, each with its own connection, over 40 expired chunks: 40 re-enqueues in all."""
    engine = db.make_engine(pg_url)
    try:
        db.upgrade(engine)
        sessions = db.session_factory(engine)
        with sessions.begin() as s:
            model_id = db.get_or_create_model(s, sha256="c" * 64, name="m", path="/m.onnx", info={})
            scan_id = db.create_scan(s, name="race", roots=["/d"], model_id=model_id, threshold=0.5, settings={})
            ids = [db.add_chunk(s, scan_id=scan_id, seq=i, paths=[f"/d/{i}.jpg"]) for i in range(40)]
            s.execute(update(Chunk).where(Chunk.id.in_(ids))
                      .values(lease_owner="gone:1", lease_until=utcnow() - timedelta(seconds=1)))
        published: list[int] = []
        lock = threading.Lock()
        start = threading.Barrier(8)

        def publish(c) -> None:
            with lock:
                published.append(c.chunk_id)

        def reap(i: int) -> None:
            start.wait()
            Reaper(sessions, publish, lease_s=LEASE, interval_s=1, name=f"r{i}").run_once()

        threads = [threading.Thread(target=reap, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(published) == sorted(ids)
        with sessions() as s:
            assert set(s.execute(select(Chunk.requeues).where(Chunk.scan_id == scan_id)).scalars()) == {1}
            assert set(s.execute(select(Chunk.lease_until).where(Chunk.scan_id == scan_id)).scalars()) == {None}
    finally:
        engine.dispose()


def test_heartbeat_renews_while_scoring_and_releases_after(sessions, chunk) -> None:
    _, chunk_id = chunk
    owner = lease_owner()
    _claim(sessions, chunk_id, owner)
    first = _row(sessions, chunk_id).lease_until
    with Heartbeat(sessions, chunk_id, owner=owner, lease_s=LEASE, renew_s=0.2):
        import time

        time.sleep(1.0)
        assert _row(sessions, chunk_id).lease_until > first
    assert _row(sessions, chunk_id).lease_until is None


def test_holder_alive_knows_dead_processes_of_this_host() -> None:
    assert holder_alive(lease_owner())
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not holder_alive(lease_owner(gone.pid))
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
        assert not holder_alive(lease_owner(zombie.pid))
    finally:
        zombie.wait()
    assert holder_alive(f"another-host:{os.getpid()}")  # another host's holder is trusted until its lease ends
    assert holder_alive("requeue:whatever")


@pytest.mark.redis
def test_producer_reaper_publishes_the_expired_chunk_to_redis(redis_server, sqlite_url: str) -> None:
    """The producer under --wait is a reaper too: the expired chunk's message lands in the real queue, once."""
    import json

    from dfscan.core.settings import from_env
    from dfscan.workers.fleet.producer import Producer

    settings = from_env(db_url=sqlite_url, broker_url=redis_server.url(), lease_seconds=10, lease_renew_seconds=1)
    with Producer(settings) as producer:
        db.upgrade(producer.engine)
        with producer.sessions.begin() as s:
            model_id = db.get_or_create_model(s, sha256="e" * 64, name="m", path="/m.onnx", info={})
            scan_id = db.create_scan(s, name="p", roots=["/d"], model_id=model_id, threshold=0.5, settings={})
            chunk_id = db.add_chunk(s, scan_id=scan_id, seq=3, paths=["/d/x.jpg"])
            s.execute(update(Chunk).where(Chunk.id == chunk_id)
                      .values(lease_owner="lost-host:7", lease_until=utcnow() - timedelta(seconds=1)))
        assert [r.chunk_id for r in producer.reaper().run_once()] == [chunk_id]
        assert producer.reaper().run_once() == []
        records = producer.lease_records(scan_id)
    client = redis_server.client()
    messages = client.lrange(settings.queue, 0, -1)
    assert len(messages) == 1
    body = json.loads(messages[0])
    kwargs = json.loads(__import__("base64").b64decode(body["body"]))[1]
    assert kwargs == {"scan_id": scan_id, "chunk_id": chunk_id, "seq": 3, "paths": ["/d/x.jpg"]}
    assert [(r.seq, r.requeues, r.expired) for r in records] == [(3, 1, False)]


@pytest.mark.parametrize(("lease", "renew"), [(1, 0.5), (30, 16.0), (30, 0.0), (7200, 5.0)])
def test_lease_settings_are_checked(lease: int, renew: float) -> None:
    from dfscan.core.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="lease"):
        Settings(lease_seconds=lease, lease_renew_seconds=renew)
