"""Orchestration throughput of a distributed scan: paths in, rows out, with a no-op model.

    python tests/bench/bench_distributed.py [--images 100000] [--workers 2] [--chunk-size 256]

Starts a throwaway Redis and PostgreSQL (``tests/_cluster.py``), ``--workers``
real ``dfscan worker`` processes with the no-op model of ``tests/_faults.py``
(no file is read, no model runs: every path gets an ``ok`` row), and runs the
real producer on a path list of ``--images`` made-up paths.  Prints:

  enqueue     producer: register, record every chunk in PostgreSQL, publish to Redis
  end-to-end  first chunk recorded -> scan completed (every row committed)
  task time   sum of the workers' task durations (from their logs) / (workers x wall)

and where the time goes.  Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--max-outstanding", type=int, default=64)
    args = parser.parse_args()

    from dfscan import db
    from dfscan.settings import from_env
    from dfscan.workers.producer import Producer
    from dfscan.scanner import ScanSource, WalkOptions
    from tests._cluster import PostgresServer, RedisServer, Worker, wait_for
    from tests._models import export_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="dfscan-bench-"))
    model = export_tiny_model(tmp / "model")
    listing = tmp / "paths.txt"
    with open(listing, "w") as out:
        for i in range(args.images):
            out.write(f"/archive/{i // 1000:05d}/img_{i:09d}.jpg\n")
    pg = PostgresServer().init()
    redis = RedisServer(tmp / "redis").start()
    url = pg.create_database(f"bench_{uuid.uuid4().hex[:8]}")
    engine = db.make_engine(url)
    db.upgrade(engine)
    engine.dispose()
    workers = [Worker(redis.url(), url, tmp, name=f"w{i}", faults={"noop_model": True},
                      env={"DFSCAN_BATCH_SIZE": "64"}) for i in range(args.workers)]  # fmt: skip
    try:
        for w in workers:
            w.wait_ready(120)
        settings = from_env(db_url=url, broker_url=redis.url(), model=model, chunk_size=args.chunk_size,
                            max_outstanding_chunks=args.max_outstanding)
        with Producer(settings) as producer:
            # Warm-up: each worker process loads its (tiny) model on its first chunk.
            warm_list = tmp / "warm.txt"
            warm_list.write_text("".join(f"/warm/{i}.jpg\n" for i in range(args.chunk_size * 2 * args.workers)))
            warm = producer.register(ScanSource((), (str(warm_list),), WalkOptions(settings.extensions)), name="warm-up")
            producer.produce(warm)
            wait_for(lambda: producer.progress(warm).status == "completed", 300, "the warm-up scan")
            for w in workers:
                w.log_path.write_text("")  # count the timed scan's tasks only
            scan_id = producer.register(ScanSource((), (str(listing),), WalkOptions(settings.extensions)), name="bench")
            t0 = time.perf_counter()
            report = producer.produce(scan_id)
            t_enqueued = time.perf_counter()
            wait_for(lambda: producer.progress(scan_id).status == "completed", 3600, "the scan", interval=0.2)
            t_done = time.perf_counter()
            p = producer.progress(scan_id)
        assert p.images_done == args.images, p
        task_s = sum(float(x) for w in workers for x in re.findall(r"succeeded in ([0-9.]+)s", w.log()))
        wall = t_done - t0
        print(f"images            {args.images} in {report.chunks_published} chunks of {args.chunk_size}, "
              f"{args.workers} workers (prefork, 1 process each), max outstanding {args.max_outstanding}")
        print(f"enqueue           {t_enqueued - t0:8.2f} s   (producer done; back-pressure keeps it in step)")
        print(f"end-to-end        {wall:8.2f} s   {args.images / wall:10.0f} images/s")
        print(f"task time         {task_s:8.2f} s   {task_s / (args.workers * wall):.0%} of the workers' wall time; "
              f"{1000 * task_s / max(1, report.chunks_published):.1f} ms per chunk "
              f"({1e6 * task_s / args.images:.0f} us per image)")
    finally:
        for w in workers:
            w.stop()
        redis.stop()
        pg.destroy()


if __name__ == "__main__":
    main()
