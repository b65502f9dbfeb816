"""Recovery from a whole worker host lost mid-chunk: rows and seconds to completion.

    python tests/bench/bench_lost_worker.py [--images 600] [--lease 30] [--renew 5] [--observe 600]

Starts a throwaway Redis and PostgreSQL (``tests/_cluster.py``), two real
``dfscan worker`` processes (tiny real model, real JPEGs, each batch slowed by
``--slow`` s so that the kill lands mid-chunk), produces a scan, SIGKILLs the
whole process group of the worker holding a half-written chunk (its host is
lost, in effect), and reports the rows over time and the seconds from the kill
to the scan's completion.  The visibility timeout stays at 3600 s.  Give
``--lease 3600`` to see the behaviour without leases (the chunk waits for the
visibility timeout; the run stops after ``--observe`` s).  Not a test.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--lease", type=int, default=30)
    parser.add_argument("--renew", type=float, default=5.0)
    parser.add_argument("--slow", type=float, default=0.3, help="extra seconds per batch of 8")
    parser.add_argument("--observe", type=float, default=600.0, help="give up after this many seconds after the kill")
    return parser.parse_args()


def one(engine, sql: str, **params):
    """The first column of the first row of ``sql``."""
    from sqlalchemy import text

    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def half_written(engine, worker, busy: Path, chunk_size: int) -> int | None:
    """The chunk one of ``worker``'s processes is half-way through (some of its rows written), if any."""
    for pid in worker.children():
        try:
            chunk_id = int((busy / str(pid)).read_text())
        except (OSError, ValueError):
            continue
        n = one(engine, "SELECT count(*) FROM results r JOIN chunks c ON c.scan_id = r.scan_id "
                "AND jsonb_exists(c.paths, r.path) WHERE c.id = :c AND c.status = 'queued'", c=chunk_id)
        if 0 < n < chunk_size:
            return chunk_id
    return None


def watch(engine, scan_id: int, killed: float, observe: float) -> tuple[str, int, float]:
    """Print the rows every 10 s until the scan ends or ``observe`` s pass: (status, rows, seconds since the kill)."""
    last_print = 0.0
    while True:
        elapsed = time.monotonic() - killed
        status = one(engine, "SELECT status FROM scans WHERE id = :s", s=scan_id)
        rows = one(engine, "SELECT count(*) FROM results WHERE scan_id = :s", s=scan_id)
        if status != "running" or elapsed > observe:
            return status, rows, elapsed
        if elapsed - last_print >= 10:
            print(f"  +{elapsed:5.0f} s  {rows} rows")
            last_print = elapsed
        time.sleep(0.5)


def main() -> None:
    args = parse_args()

    from dfscan import db
    from dfscan.core.settings import from_env
    from dfscan.scanner import ScanSource, WalkOptions
    from dfscan.workers.fleet.producer import Producer
    from tests._cluster import PostgresServer, RedisServer, Worker, wait_for
    from tests._images import write_jpegs
    from tests._models import export_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="dfscan-lost-"))
    model = export_tiny_model(tmp / "model")
    write_jpegs(tmp / "archive", args.images, size=(64, 64))
    busy = tmp / "busy"
    busy.mkdir()
    pg = PostgresServer().init()
    redis = RedisServer(tmp / "redis").start()
    url = pg.create_database(f"lost_{uuid.uuid4().hex[:8]}")
    engine = db.make_engine(url)
    db.upgrade(engine)

    env = {"DFSCAN_LEASE_SECONDS": str(args.lease), "DFSCAN_LEASE_RENEW_SECONDS": str(args.renew)}
    # A fleet chunk commits once, at its end: commit batch by batch (8 paths, _cluster.Worker's batch size) so that
    # a chunk can be half-written when its worker dies, as a chunk over FLUSH_ROWS rows is.
    faults = {"slow_batch_s": args.slow, "busy_dir": str(busy), "flush_rows": 8}
    workers = [Worker(redis.url(), url, tmp, name=n, env=env, faults=faults) for n in ("a", "b")]
    try:
        for w in workers:
            w.wait_ready()
        settings = from_env(db_url=url, broker_url=redis.url(), model=model, chunk_size=args.chunk_size)
        with Producer(settings) as producer:
            source = ScanSource(roots=(str(tmp / "archive"),), options=WalkOptions(extensions=settings.extensions))
            scan_id = producer.register(source)
            producer.produce(scan_id)
        a = workers[0]
        chunk_id = wait_for(lambda: half_written(engine, a, busy, args.chunk_size), 120,
                            "worker a half-way through a chunk", interval=0.05)
        rows_at_kill = one(engine, "SELECT count(*) FROM results WHERE scan_id = :s", s=scan_id)
        a.kill_group(signal.SIGKILL)
        killed = time.monotonic()
        print(f"killed worker a (whole process group) mid-chunk {chunk_id}: {rows_at_kill} of {args.images} rows")
        status, rows, elapsed = watch(engine, scan_id, killed, args.observe)
        distinct = one(engine, "SELECT count(DISTINCT path) FROM results WHERE scan_id = :s", s=scan_id)
        requeues = one(engine, "SELECT requeues FROM chunks WHERE id = :c", c=chunk_id)
        print(f"lease {args.lease} s, renew {args.renew} s, visibility timeout "
              f"{from_env().visibility_timeout} s: scan {status} {elapsed:.1f} s after the kill; "
              f"{rows} rows ({distinct} distinct) of {args.images}; the killed chunk re-enqueued {requeues} time(s)")
    finally:
        for w in workers:
            w.stop()
        engine.dispose()
        redis.stop()
        pg.destroy()


if __name__ == "__main__":
    main()
