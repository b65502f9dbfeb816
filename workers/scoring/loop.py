"""The one loop: chunks of paths in, one committed result row per path out.

The embedded scan, the fleet's chunks and the service's scans all run
:func:`run_chunks`; what differs between them is a :class:`Policy`:

* :data:`EMBEDDED` records each chunk as it is reached and commits every
  batch (its progress bar and its stop between batches follow the commits);
* :data:`FLEET` scores one chunk already recorded by the producer and writes
  it in one transaction, its rows together with its completion (``done``,
  its counts, the end of its lease); a chunk larger than :data:`FLUSH_ROWS`
  commits its rows every :data:`FLUSH_ROWS` rows and finishes with the last
  ones.  A worker killed mid-chunk leaves nothing or whole flushes behind, and
  the chunk is scored again: every write is an upsert.  Copies in its later
  batches take its earlier batches' rows before they are committed.

Batches are prepared (the stages of the ``prepare`` phase: reading, decoding,
sampling) in a background thread, :func:`prefetch`, ahead of the score phase,
so reading and decoding overlap inference.  Each stage's seconds are timed
where it runs (``Batch.timings``).

Memory: a batch waiting in the prefetch queue holds its decoded tensors only
(64 x 3 x 224 x 224 float32, 38 MB); file bytes exist only while the image
stage reads and decodes, within its byte budget; rows of a chunk wait for
their commit, at most :data:`FLUSH_ROWS` of them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from dfscan import db

from dfscan.db.records import ResultRow
from dfscan.scanner.chunks import Chunk, chunked
from dfscan.workers.scoring import dedupe
from dfscan.workers.scoring.context import ScanContext
from dfscan.workers.scoring.stages import Batch
from dfscan.workers.scoring.stages import Job

__all__ = ["EMBEDDED", "FLEET", "FLUSH_ROWS", "BatchHook", "ChunkResult", "Policy", "prefetch", "run_chunks",
           "run_local_scan", "score_chunk", "split"]

# A batch's rows and its seconds per stage ("total": from its first stage to its rows).
BatchHook = Callable[[list[ResultRow], dict[str, float]], None]

# Rows a distributed chunk holds before it commits them: bounds memory whatever the chunk size.
FLUSH_ROWS = 4096


@dataclass(frozen=True)
class ChunkResult:
    scan_id: int
    chunk_id: int | None
    total: int
    ok: int
    real: int
    fake: int
    errors: int
    # Seconds per step: "read" waiting for prepared batches, "score", "write" (each stage's: the on_batch hook).
    timings: dict[str, float] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Policy:
    """What differs between the callers of the one loop."""

    record_chunks: bool  # chunks are recorded as they are reached (the embedded scan); else they exist already
    commit_every_batch: bool  # else one transaction per chunk (per FLUSH_ROWS rows)
    depth: int = 2  # prepared batches waiting ahead of the score phase
    on_batch: BatchHook | None = None
    stop: threading.Event | None = None  # set: finish and commit the batch in flight, then stop
    roots: tuple[str, ...] | None = None  # the scan's reads stay under these (scanner.confine); None: not confined

    def with_(self, **changes) -> "Policy":
        return replace(self, **changes)


EMBEDDED = Policy(record_chunks=True, commit_every_batch=True, depth=3)
FLEET = Policy(record_chunks=False, commit_every_batch=False, depth=2)


class _ChunkRun:
    """One chunk's counts, rows waiting for their commit, and (fleet) its rows by content hash."""

    def __init__(self, ctx: ScanContext, chunk: Chunk, model_id: int, policy: Policy) -> None:
        self.ctx, self.chunk, self.model_id, self.policy = ctx, chunk, model_id, policy
        self.counts: Counter = Counter()
        self.pending: list[ResultRow] = []
        self.unwritten: dict = {}
        self.timings: Counter = Counter()
        self.job = Job(chunk.scan_id, model_id, ctx.verdict, lookup=self._lookup)

    def _lookup(self, hashes: list[str]) -> dict:
        """Known rows for ``hashes``: this chunk's uncommitted ones first, then one query (workers.scoring.dedupe)."""
        local = {h: self.unwritten[h] for h in hashes if h in self.unwritten}
        rest = [h for h in hashes if h not in local]
        if not rest:
            return local
        ctx = self.ctx

        def read() -> dict:
            with ctx.sessions() as session:
                return db.known_verdicts(session, scan_id=self.chunk.scan_id, model_id=self.model_id, hashes=rest,
                                         reuse=ctx.reuse_verdicts, faces=ctx.faces_record() is not None)

        found = db.retry_db(read, deadline_s=ctx.settings.db_retry_seconds,
                         what=f"looking up copies in scan {self.chunk.scan_id}")
        return {**found, **local}

    def take(self, batch: Batch, last: bool) -> list[ResultRow]:
        clock = time.perf_counter
        started = clock()
        self.ctx.stages.score(batch, self.job)
        rows = batch.result
        assert rows is not None
        _tally(self.counts, rows)
        self.pending.extend(rows)
        if not self.policy.commit_every_batch:
            dedupe.remember(self.unwritten, rows, self.chunk.scan_id)
        scored = clock()
        self.timings["score"] += scored - started
        if self.policy.on_batch is not None:
            self.policy.on_batch(rows, {**batch.timings, "total": scored - batch.started})
        if last or self.policy.commit_every_batch or len(self.pending) >= FLUSH_ROWS:
            self.write(finish=last)
        return rows

    def write(self, finish: bool) -> None:
        """Commit the pending rows (and, with the chunk's last rows, the chunk's end) in one transaction.

        A lost connection or a database restart is retried with back-off for up
        to ``settings.db_retry_seconds``: the transaction is an upsert and a set,
        so running it again after an unknown outcome gives the same rows.
        """
        ctx, chunk, rows, counts = self.ctx, self.chunk, self.pending, self.counts
        started = time.perf_counter()

        def work() -> None:
            with ctx.sessions.begin() as session:
                db.write_batch(session, scan_id=chunk.scan_id, model_id=self.model_id, rows=rows)
                if finish and chunk.chunk_id is not None:
                    db.finish_chunk(session, chunk_id=chunk.chunk_id, ok=counts["ok"], fake=counts["fake"],
                                    real=counts["real"], errors=counts["errors"])

        db.retry_db(work, deadline_s=ctx.settings.db_retry_seconds,
                 what=f"writing chunk {chunk.seq} of scan {chunk.scan_id}")
        self.pending = []
        self.timings["write"] += time.perf_counter() - started

    def result(self) -> ChunkResult:
        c = self.counts
        return ChunkResult(self.chunk.scan_id, self.chunk.chunk_id, c["total"], c["ok"], c["real"], c["fake"],
                           c["errors"], dict(self.timings))


def _tally(counts: Counter, rows: list[ResultRow]) -> None:
    for row in rows:
        counts["total"] += 1
        if row.status == "ok":
            counts["ok"] += 1
            counts[row.label] += 1
        elif row.status == "error":
            counts["errors"] += 1
        else:  # no-face: neither a verdict nor an error
            counts[row.status] += 1


def _prepared(ctx: ScanContext, chunks: Iterable[Chunk], model_id: int,
              roots: tuple[str, ...] | None = None) -> Iterator[tuple[Chunk, int, int, Batch]]:
    """Every chunk's batches in order, prepared, each with its chunk, its position and the chunk's batch count."""
    for chunk in chunks:
        parts = list(split(chunk.paths, ctx.batch_size, ctx.stages.cost))
        job = Job(chunk.scan_id, model_id, ctx.verdict, roots=roots)
        for i, paths in enumerate(parts):
            yield chunk, i, len(parts), ctx.stages.prepare(paths, job)


def run_chunks(ctx: ScanContext, chunks: Iterable[Chunk], model_id: int, policy: Policy) -> list[ChunkResult] | None:
    """Score and commit every path of ``chunks``: the one loop. None if ``policy.stop`` was set before the end."""
    results: list[ChunkResult] = []
    run: _ChunkRun | None = None
    clock = time.perf_counter
    stream = prefetch(_prepared(ctx, chunks, model_id, policy.roots), depth=policy.depth)
    try:
        waited = clock()
        for chunk, index, count, batch in stream:
            if index == 0:
                if policy.record_chunks:
                    chunk = _recorded(ctx, chunk)
                run = _ChunkRun(ctx, chunk, model_id, policy)
            assert run is not None
            run.timings["read"] += clock() - waited
            run.take(batch, last=index == count - 1)
            if index == count - 1:
                results.append(run.result())
            if policy.stop is not None and policy.stop.is_set():
                return None
            waited = clock()
    finally:
        stream.close()
    return results


def _recorded(ctx: ScanContext, chunk: Chunk) -> Chunk:
    def add() -> int:
        with ctx.sessions.begin() as session:
            return db.add_chunk(session, scan_id=chunk.scan_id, seq=chunk.seq, paths=list(chunk.paths))

    chunk_id = db.retry_db(add, deadline_s=ctx.settings.db_retry_seconds, what="recording a chunk")
    return Chunk(chunk.scan_id, chunk.seq, chunk.paths, chunk_id)


def score_chunk(ctx: ScanContext, chunk: Chunk, model_id: int, on_batch: BatchHook | None = None,
                roots: tuple[str, ...] | None = None) -> ChunkResult:
    """Score every path of ``chunk`` (recorded by the producer) and commit its rows; the chunk ends ``done``.

    ``roots``: the scan's reads stay under them (its walk followed no symbolic link; scanner.confine).
    """
    if not chunk.paths:
        run = _ChunkRun(ctx, chunk, model_id, FLEET)
        run.write(finish=True)
        return run.result()
    (result,) = run_chunks(ctx, [chunk], model_id, FLEET.with_(on_batch=on_batch, roots=roots))  # type: ignore[misc]
    return result


def run_local_scan(ctx: ScanContext, scan_id: int, model_id: int, paths: Iterable[str], *,
                   on_batch: BatchHook | None = None, stop: threading.Event | None = None,
                   roots: tuple[str, ...] | None = None) -> bool:
    """Stream ``paths`` through the loop in this process; False if ``stop`` was set (the batch in flight commits).

    ``roots``: the scan's reads stay under them (scanner.confine).
    """
    chunks = (Chunk(scan_id, seq, tuple(batch)) for seq, batch in enumerate(chunked(paths, ctx.settings.chunk_size)))
    policy = EMBEDDED.with_(on_batch=on_batch, stop=stop, roots=roots)
    return run_chunks(ctx, chunks, model_id, policy) is not None


def split(paths: Sequence[str], size: int, cost: Callable[[str], int] | None = None) -> Iterator[Sequence[str]]:
    """Consecutive batches of ``paths`` weighing at most ``size`` each (by ``cost``, default 1 a path).

    A video weighs its frames, so a batch holds 64 frames' worth, not 64
    videos; one path heavier than ``size`` is a batch of its own.
    """
    if cost is None:
        for start in range(0, len(paths), size):
            yield paths[start : start + size]
        return
    start, weight = 0, 0
    for i, path in enumerate(paths):
        w = max(1, cost(path))
        if i > start and weight + w > size:
            yield paths[start:i]
            start, weight = i, 0
        weight += w
    if start < len(paths):
        yield paths[start:]
def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """Run ``items`` in a background thread, ``depth`` ahead of the consumer.

    This is what overlaps reading and decoding with inference.  An exception in
    the producer is re-raised in the consumer; closing the consumer stops the
    producer.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((None, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((None, done))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put((exc, None))

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            exc, item = q.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        stop.set()
        # Unblock a producer waiting on a full queue; a producer blocked on its own
        # input (stdin) is a daemon thread and is left behind after a few seconds.
        for _ in range(100):
            if not thread.is_alive():
                break
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.05)
