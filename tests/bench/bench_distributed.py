"""Orchestration throughput of a distributed scan: paths in, rows out, with a no-op model.

    python tests/bench/bench_distributed.py [--images 100000] [--workers 2] [--chunk-size N]
                                            [--rss-paths 10000000]

Starts a throwaway Redis and PostgreSQL (``tests/_cluster.py``), ``--workers``
real ``dfscan worker`` processes with the no-op model of ``tests/_faults.py``
(no file is read, no model runs: every path gets an ``ok`` row), and runs the
real producer on a path list of ``--images`` made-up paths.  Prints:

  enqueue     producer: register, record every chunk in PostgreSQL, publish to Redis
  end-to-end  first chunk recorded -> scan completed (every row committed)
  ceiling     the machine's write ceiling, measured five times just before and five times just
              after the scan on the same server, all ten printed, and their median used: one COPY
              of the same rows (the scan's paths, as the workers write them) into a table with the
              written columns of results and no index, key or constraint, committed once; and the
              scan's images/s as a ratio of it (the shared machine's load moves both; the median,
              not the best, so that one lucky or unlucky COPY does not set the ratio)
  task time   sum of the workers' task durations (from their logs) / (workers x wall)
  schema      after the scan, the same COPY into a table made LIKE results (its key, indexes and checks,
              as a scan's partition has them), three times each, median: of the scan's rows (the no-op
              model's: no content hash, nothing flagged, no error), and of the same paths as rows of a real
              scan (a content hash each, 10 % flagged fake, 2 % errors), each as a ratio of the ceiling:
              what PostgreSQL's indexes leave of the ceiling before any worker runs

and where the time goes, per image: the producer's stages (walk, record, publish,
back-pressure wait: its own clock), each worker stage (from the line a worker logs per
chunk: claim, read+decode, score, write = rows and the chunk's completion in one
transaction, the scan's completion check), Celery's own time inside a task, and the time
between tasks (broker round trips, acknowledgement, the prefork pool's pipes).  Worker
stages are summed over both workers, so they add up to about workers x wall time.

``--rss-paths N`` then runs the producer alone (the real ``dfscan scan --broker``
command, in its own process) over a path list of N made-up paths, with a drain
standing in for infinitely fast workers (it pops each message from Redis and marks
the chunk done in PostgreSQL), and prints the producer's resident memory as it goes
and at its peak.  Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# How many times the write ceiling is measured before the scan, and again after it: ten COPYs, because on a
# shared machine one COPY's rate moves by 1.5-2x within a run and the median of six still moved the ratio.
CEILING_RUNS = 5
# How many times each schema COPY is measured (after the scan).
SCHEMA_RUNS = 3
# The line workers/tasks.py logs per chunk.
CHUNK_LINE = re.compile(r"chunk \d+ of scan (\d+): \w[\w-]*, (\d+) paths in ([0-9.]+) ms \(([^)]*)\)")


def write_listing(path: Path, n: int) -> None:
    with open(path, "w") as out:
        for start in range(0, n, 100_000):
            out.write("".join(f"/archive/{i // 1000:05d}/img_{i:09d}.jpg\n" for i in range(start, min(n, start + 100_000))))


def worker_stages(logs: list[str], scan_id: int) -> tuple[Counter, int]:
    """Milliseconds per stage summed over the scan's chunks, and how many chunks."""
    total: Counter = Counter()
    chunks = 0
    for text in logs:
        for m in CHUNK_LINE.finditer(text):
            if int(m.group(1)) != scan_id:
                continue
            chunks += 1
            total["handled"] += float(m.group(3))
            for part in m.group(4).split(", "):
                name, value = part.rsplit(" ", 1)
                total[name] += float(value)
    return total, chunks


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return out


def cpu_seconds(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each named process and its descendants.

    A negative pid stands for that process alone (this one, whose children are the others).
    """
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, root in roots.items():
        total = 0
        for p in ([-root] if root < 0 else _tree(root)):
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        out[name] = total / tick
    return out


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in kB."""
    fields = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


def drain(redis_url: str, pg_dsn: str, queue: str, stop: threading.Event) -> int:
    """Stand in for workers: pop chunk messages, mark their chunks done.  Returns how many."""
    import psycopg
    import redis

    client = redis.Redis.from_url(redis_url)
    n = 0
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        while True:
            raw = client.lpop(queue, 500)
            if not raw:
                if stop.is_set():
                    return n
                time.sleep(0.01)
                continue
            ids = []
            for message in raw:
                envelope = json.loads(message)
                body = envelope["body"]
                if envelope.get("properties", {}).get("body_encoding") == "base64":
                    body = base64.b64decode(body)
                ids.append(int(json.loads(body)[1]["chunk_id"]))
            conn.execute("UPDATE chunks SET status = 'done', finished_at = now() WHERE id = ANY(%s)", (ids,))
            n += len(ids)


def producer_rss(args, tmp: Path, pg, redis, model: Path) -> None:
    listing = tmp / "rss-paths.txt"
    t0 = time.perf_counter()
    write_listing(listing, args.rss_paths)
    print(f"\nproducer alone   {args.rss_paths} paths ({listing.stat().st_size / 1e6:.0f} MB list written in "
          f"{time.perf_counter() - t0:.0f} s), drained by a stand-in for workers")
    url = pg.create_database(f"rss_{uuid.uuid4().hex[:8]}")
    dsn = f"host=127.0.0.1 port={pg.port} user=postgres dbname={url.rsplit('/', 1)[1]}"
    stop = threading.Event()
    drained: list[int] = []
    thread = threading.Thread(target=lambda: drained.append(drain(redis.url(1), dsn, "dfscan", stop)), daemon=True)
    thread.start()
    dfscan = str(Path(sys.executable).with_name("dfscan"))
    cmd = [dfscan, "scan", "--paths-from", str(listing), "--broker", redis.url(1), "--db", url, "--model", str(model),
           "--chunk-size", str(args.chunk_size), "--max-outstanding", str(args.max_outstanding), "--json"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, int]] = []
    peak = 0
    while proc.poll() is None:
        try:
            rss, hwm = rss_kb(proc.pid)
        except OSError:
            break
        peak = max(peak, hwm)
        samples.append((time.perf_counter() - t0, rss))
        time.sleep(0.5)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    thread.join(60)
    if proc.returncode != 0:
        print(f"producer failed ({proc.returncode}):\n{err[-2000:]}")
        return
    report = json.loads(out)
    print(f"producer         {report['images']} paths in {report['chunks_enqueued']} chunks in {wall:.1f} s "
          f"({report['images'] / wall:.0f} paths/s, process start included); scan {report['status']}")
    marks = [samples[int(len(samples) * f)] for f in (0.1, 0.25, 0.5, 0.75) if samples] + samples[-1:]
    print("producer RSS     " + ", ".join(f"{rss / 1024:.0f} MB at {t:.0f} s" for t, rss in marks))
    print(f"producer peak    {peak / 1024:.0f} MB (VmHWM)")


@dataclass(frozen=True)
class TimedScan:
    """What the timed scan measured: its clocks, the producer's own stage timings, CPU per process."""

    scan_id: int
    report: Any  # the producer's report for the scan
    progress: Any  # the scan's progress once completed
    t0: float
    t_enqueued: float
    t_done: float
    timings: dict[str, float] | None
    cpu: dict[str, float]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=None, help="paths per chunk (default: the product's)")
    parser.add_argument("--max-outstanding", type=int, default=64)
    parser.add_argument("--rss-paths", type=int, default=0,
                        help="then run the producer alone over this many paths and print its memory (e.g. 10000000)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.chunk_size is None:
        from dfscan.core.settings import Settings

        args.chunk_size = Settings().chunk_size

    from dfscan import db
    from dfscan.core.settings import from_env
    from dfscan.workers.fleet.producer import Producer
    from tests._cluster import PostgresServer, RedisServer, Worker
    from tests._models import export_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="dfscan-bench-"))
    model = export_tiny_model(tmp / "model")
    listing = tmp / "paths.txt"
    write_listing(listing, args.images)
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
            warm_up(producer, settings, tmp / "warm.txt", args.chunk_size * 2 * args.workers)
            for w in workers:
                w.log_path.write_text("")  # count the timed scan's tasks only
            before = [write_ceiling(url, listing) for _ in range(CEILING_RUNS)]
            timed = timed_scan(producer, settings, listing, pg, redis, workers)
        assert timed.progress.images_done == args.images, timed.progress
        after = [write_ceiling(url, listing) for _ in range(CEILING_RUNS)]
        ceiling = statistics.median(before + after)
        print(f"write ceilings    before the scan {', '.join(f'{c:.0f}' for c in before)}; after it "
              f"{', '.join(f'{c:.0f}' for c in after)} rows/s; median {ceiling:.0f}")
        print_report(args, timed, [w.log() for w in workers], ceiling)
        print_schema_copies(url, listing, ceiling)
        if args.rss_paths:
            for w in workers:  # the drain stands in for them
                w.stop()
            producer_rss(args, tmp, pg, redis, model)
    finally:
        for w in workers:
            w.stop()
        redis.stop()
        pg.destroy()
        shutil.rmtree(tmp, ignore_errors=True)  # the model, the path lists (330 MB for 10M paths), the logs


def warm_up(producer, settings, warm_list: Path, n: int) -> None:
    """Each worker process loads its (tiny) model on its first chunk: a scan of ``n`` paths does that first."""
    from dfscan.scanner import ScanSource, WalkOptions
    from tests._cluster import wait_for

    warm_list.write_text("".join(f"/warm/{i}.jpg\n" for i in range(n)))
    warm = producer.register(ScanSource((), (str(warm_list),), WalkOptions(settings.extensions)), name="warm-up")
    producer.produce(warm)
    wait_for(lambda: producer.progress(warm).status == "completed", 300, "the warm-up scan")


def timed_scan(producer, settings, listing: Path, pg, redis, workers) -> TimedScan:
    """Scan ``listing`` to completion, with the clocks and every process's CPU time around it."""
    from dfscan.scanner import ScanSource, WalkOptions
    from tests._cluster import wait_for

    timings = getattr(producer, "timings", None)
    if timings is not None:
        for key in timings:
            timings[key] = 0.0
    scan_id = producer.register(ScanSource((), (str(listing),), WalkOptions(settings.extensions)), name="bench")
    postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
    roots = {"postgresql": postmaster, "redis": redis.proc.pid, "producer (this process)": -os.getpid(),
             **{f"worker {w.name}": w.pid for w in workers}}
    cpu0 = cpu_seconds(roots)
    t0 = time.perf_counter()
    report = producer.produce(scan_id)
    t_enqueued = time.perf_counter()
    wait_for(lambda: scan_status(producer, scan_id) == "completed", 3600, "the scan", interval=0.05)
    t_done = time.perf_counter()
    cpu1 = cpu_seconds(roots)
    return TimedScan(scan_id=scan_id, report=report, progress=producer.progress(scan_id), t0=t0,
                     t_enqueued=t_enqueued, t_done=t_done, timings=timings,
                     cpu={k: cpu1[k] - cpu0[k] for k in roots})


def scan_status(producer, scan_id: int) -> str:
    """The scan's status alone, read by its key: how the timed scan is watched for its end.

    Not ``producer.progress``: that aggregates every result row of the scan (about 30 ms a call at 50,000 rows
    on the loaded 2-core machine), and polled every 50 ms it took PostgreSQL's CPU from the scan it was
    timing (a deployed producer asks once a second).
    """
    from dfscan import db

    with producer.sessions() as session:
        return db.scan_head(session, scan_id).status


def write_ceiling(url: str, listing: Path) -> float:
    """Rows/s of one COPY of the scan's rows into an unindexed, unkeyed copy of ``results``, committed.

    The rows are the no-op model's (``tests/_faults.py``) for the same paths, formatted by the write path's
    own COPY formatting (:func:`dfscan.db.results.copy_values`); the table has the written columns of
    ``results`` with their types and nothing else (no key, index, NOT NULL, check, foreign key or
    partitioning).  Timed: formatting, the COPY and the commit, in this process on one connection.
    """
    from dfscan.db.results import copy_columns

    columns = ", ".join(copy_columns())
    rows = bench_rows(listing.read_text().splitlines(), real_scan=False)
    return timed_copy(url, rows, f"CREATE TABLE bench_copy AS SELECT {columns} FROM results WITH NO DATA")


def bench_rows(paths: list[str], real_scan: bool) -> list:
    """The rows the benchmark COPYs: the no-op model's (``tests/_faults.py``), or, ``real_scan``, rows as a real
    scan of the same paths writes them (size, mtime and content hash of every file read; every 10th flagged
    fake, every 50th an error with no verdict and no hash), made deterministically from each path's position."""
    import hashlib
    from datetime import datetime, timezone

    from dfscan.db.records import ResultRow

    now = datetime.now(timezone.utc)
    if not real_scan:
        return [ResultRow(p, None, None, "ok", "real", 0.1, 0.9, None, None, now) for p in paths]
    rows = []
    for i, p in enumerate(paths):
        if i % 50 == 7:
            rows.append(ResultRow(p, None, None, "error", None, None, None, "cannot decode", "decode-failed", now))
            continue
        p_fake = 0.5 + (i % 997) / 2000 if i % 10 == 3 else (i % 991) / 2000
        rows.append(ResultRow(p, 20_000 + i % 5000, 1_767_225_600.0 + i, "ok", "fake" if p_fake >= 0.5 else "real",
                              p_fake, max(p_fake, 1 - p_fake), None, None, now,
                              content_hash=hashlib.sha256(p.encode()).hexdigest()))
    return rows


def schema_copy(url: str, rows: list) -> float:
    """Rows/s of one COPY of ``rows`` into a table made LIKE results with its key, indexes and checks (as a
    scan's partition has them), committed: PostgreSQL's own cost of the schema, with no worker around it."""
    return timed_copy(url, rows, "CREATE TABLE bench_copy (LIKE results INCLUDING ALL)")


def timed_copy(url: str, rows: list, create: str) -> float:
    """Rows/s of one committed COPY of ``rows`` (the write path's own formatting) into ``bench_copy``, made by
    ``create`` first and dropped after."""
    import psycopg

    from dfscan.db.results import copy_columns, copy_values

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_copy")
        conn.execute(create)
        conn.commit()
        columns = ", ".join(copy_columns())
        t0 = time.perf_counter()
        with conn.cursor() as cur, cur.copy(f"COPY bench_copy ({columns}) FROM STDIN") as copy:
            for row in copy_values(rows, scan_id=1, model_id=1):
                copy.write_row(row)
        conn.commit()
        elapsed = time.perf_counter() - t0
        conn.execute("DROP TABLE bench_copy")
        conn.commit()
    return len(rows) / elapsed


def print_schema_copies(url: str, listing: Path, ceiling: float) -> None:
    paths = listing.read_text().splitlines()
    for real_scan, what in ((False, "the scan's rows   "), (True, "a real scan's rows")):
        rows = bench_rows(paths, real_scan)
        rates = [schema_copy(url, rows) for _ in range(SCHEMA_RUNS)]
        rate = statistics.median(rates)
        print(f"schema COPY, {what} {rate:10.0f} rows/s  {rate / ceiling:5.2f} x of the ceiling  "
              f"({', '.join(f'{r:.0f}' for r in rates)}; into a table LIKE results: key, indexes, checks)")


def print_report(args: argparse.Namespace, timed: TimedScan, logs: list[str], ceiling: float) -> None:
    """Throughput, then where the time goes per image: producer, worker stages, Celery, between tasks, CPU."""
    report, timings = timed.report, timed.timings
    task_s = sum(float(x) for text in logs for x in re.findall(r"succeeded in ([0-9.]+)s", text))
    wall = timed.t_done - timed.t0
    n = args.images
    print(f"images            {n} in {report.chunks_published} chunks of {args.chunk_size}, "
          f"{args.workers} workers (prefork, 1 process each), max outstanding {args.max_outstanding}")
    print(f"enqueue           {timed.t_enqueued - timed.t0:8.2f} s   (producer done; back-pressure keeps it in step)")
    print(f"end-to-end        {wall:8.2f} s   {n / wall:10.0f} images/s")
    print(f"write ceiling     {ceiling:10.0f} rows/s  (median of {2 * CEILING_RUNS} COPYs of the same rows into a "
          "table with no index or key)")
    print(f"ratio             {n / wall / ceiling:10.2f} x   (end-to-end images/s over the write ceiling)")
    print(f"task time         {task_s:8.2f} s   {task_s / (args.workers * wall):.0%} of the workers' wall time; "
          f"{1000 * task_s / max(1, report.chunks_published):.1f} ms per chunk "
          f"({1e6 * task_s / n:.0f} us per image)")
    print("where the time goes, in microseconds per image")
    if timings is not None:
        print("  producer        " + ", ".join(f"{k} {1e6 * v / n:.1f}" for k, v in timings.items())
              + f"  (of {1e6 * wall / n:.1f} wall)")
    stages, chunks = worker_stages(logs, timed.scan_id)
    if chunks:
        handled = stages.pop("handled") / 1000
        parts = ", ".join(f"{k} {1e3 * v / n:.1f}" for k, v in stages.items())
        print(f"  workers         {parts}  (chunk handling {1e6 * handled / n:.1f})")
        print(f"  celery in task  {1e6 * (task_s - handled) / n:.1f}  (task time minus chunk handling)")
    else:
        print("  workers         (no per-chunk stage lines in the worker logs)")
    print(f"  between tasks   {1e6 * (args.workers * wall - task_s) / n:.1f}  (workers x wall minus task time: "
          "broker fetch, acknowledgement, prefork pipes, idle)")
    cpu = timed.cpu
    print("CPU time, in microseconds per image (2 cores shared with everything else on the machine)")
    print("  " + ", ".join(f"{k} {1e6 * v / n:.1f}" for k, v in cpu.items())
          + f"; all {1e6 * sum(cpu.values()) / n:.1f} of {2e6 * wall / n:.1f} core-time")


if __name__ == "__main__":
    main()
