"""The batch pipeline: chunks of paths in, one committed result row per path out.

:func:`score_chunk` is the unit a Celery task calls; :func:`run_local_scan`
is the embedded default, which streams every chunk of a walk through the same
steps in one process.  Both overlap reading and decoding (a background thread,
:func:`workers.batches.prefetch`) with inference.

Transactions: a chunk scored by :func:`score_chunk` is written in one
transaction, its rows together with its completion (``done``, its counts, the
end of its lease); a chunk larger than :data:`FLUSH_ROWS` commits its rows
every :data:`FLUSH_ROWS` rows and finishes with the last ones, so the rows
held stay bounded.  A worker killed mid-chunk leaves nothing or whole flushes
behind, and the chunk is scored again: every write is an upsert, so re-running
a chunk rewrites the same rows, never adds to them.  The embedded mode commits
every batch (its progress bar and its stop between batches follow the commits).

Memory: a batch waiting in the prefetch queue holds its decoded tensors only
(64 x 3 x 224 x 224 float32, 38 MB); file bytes exist only while
:meth:`workers.batches.BatchMaker.prepare` reads and decodes, within its byte
budget; rows of a chunk wait for their commit, at most :data:`FLUSH_ROWS` of them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from dfscan import db
from dfscan.db.chunks import retry_db
from dfscan.db.records import ResultRow
from dfscan.scanner.chunks import Chunk, chunked
from dfscan.workers.scoring import dedupe
from dfscan.workers.scoring.batches import PreparedBatch, prefetch, score, split
from dfscan.workers.scoring.context import ScanContext

ProgressHook = Callable[[list[ResultRow]], None]

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
    # Seconds spent per stage (score_chunk: "read" waiting for decoded batches, "score", "write").
    timings: dict[str, float] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class _Tag:
    chunk: Chunk
    index: int
    count: int

    @property
    def last(self) -> bool:
        return self.index == self.count - 1


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


def _result(chunk: Chunk, counts: Counter, timings: dict[str, float] | None = None) -> ChunkResult:
    return ChunkResult(
        chunk.scan_id, chunk.chunk_id, counts["total"], counts["ok"], counts["real"], counts["fake"], counts["errors"],
        timings or {},
    )


def _prepared(ctx: ScanContext, chunks: Iterable[Chunk]) -> Iterator[PreparedBatch]:
    """Batches of every chunk in order, each tagged with its chunk and position."""
    for chunk in chunks:
        parts = list(split(chunk.paths, ctx.batch_size, ctx.batches.cost))
        for i, paths in enumerate(parts):
            prepared = ctx.batches.prepare(paths)
            prepared.tag = _Tag(chunk, i, len(parts))
            yield prepared


def _write(ctx: ScanContext, chunk: Chunk, model_id: int, rows: list[ResultRow], finish: Counter | None) -> None:
    """Commit rows (and, with the chunk's last rows, the chunk's end) in one transaction.

    A lost connection or a database restart is retried with back-off for up
    to ``settings.db_retry_seconds``: the transaction is an upsert and a set,
    so running it again after an unknown outcome gives the same rows.
    """

    def work() -> None:
        with ctx.sessions.begin() as session:
            db.write_batch(session, scan_id=chunk.scan_id, model_id=model_id, rows=rows)
            if finish is not None and chunk.chunk_id is not None:
                db.finish_chunk(
                    session,
                    chunk_id=chunk.chunk_id,
                    ok=finish["ok"],
                    fake=finish["fake"],
                    real=finish["real"],
                    errors=finish["errors"],
                )

    retry_db(work, deadline_s=ctx.settings.db_retry_seconds, what=f"writing chunk {chunk.seq} of scan {chunk.scan_id}")


def _scored(ctx: ScanContext, prepared: PreparedBatch, scan_id: int, model_id: int,
            unwritten: dict | None = None) -> list[ResultRow]:
    """Rows of a batch, each distinct content scored once (:mod:`workers.dedupe`).

    Before inference, one query asks which of the batch's content hashes this
    scan (or, with ``reuse_verdicts``, an earlier scan of this model) already
    has a verdict for; those files take it, the rest go to :func:`score`.
    ``unwritten``: rows of this scan scored but not yet committed (a fleet
    chunk commits once, at its end), by content hash; they come first.
    """

    def lookup(hashes: list[str]) -> dict:
        local = {h: unwritten[h] for h in hashes if unwritten and h in unwritten}
        rest = [h for h in hashes if h not in local]
        return {**(_stored(rest) if rest else {}), **local}

    def _stored(hashes: list[str]) -> dict:
        def read() -> dict:
            with ctx.sessions() as session:
                return db.known_verdicts(session, scan_id=scan_id, model_id=model_id, hashes=hashes,
                                         reuse=ctx.reuse_verdicts, faces=ctx.faces_record() is not None)

        return retry_db(read, deadline_s=ctx.settings.db_retry_seconds, what=f"looking up copies in scan {scan_id}")

    if prepared.parts is not None:  # images and videos: each kind looked up on its own (videos have no hash)
        rows: list[ResultRow | None] = [None] * len(prepared.paths)
        for positions, part in prepared.parts:
            for pos, row in zip(positions, _scored(ctx, part, scan_id, model_id, unwritten)):
                rows[pos] = row
        return rows  # type: ignore[return-value]
    options = getattr(ctx.batches.decoder, "options", None)
    batch = dedupe.plan(prepared, lookup, scan_id, ctx.verdict, getattr(options, "aggregation", "max"))
    return batch.rows(score(batch.todo, ctx.runtime, ctx.verdict) if batch.todo.paths else [])


def _add_chunk(ctx: ScanContext, chunk: Chunk) -> int:
    with ctx.sessions.begin() as session:
        return db.add_chunk(session, scan_id=chunk.scan_id, seq=chunk.seq, paths=list(chunk.paths))


def score_chunk(ctx: ScanContext, chunk: Chunk, model_id: int, on_batch: ProgressHook | None = None) -> ChunkResult:
    """Score every path of ``chunk`` and commit its rows; the chunk ends ``done``.

    One transaction for the whole chunk (see the module's docstring), or one
    per :data:`FLUSH_ROWS` rows for a larger chunk.  ``on_batch`` sees each
    batch's rows as soon as they are scored, before their commit.
    """
    counts: Counter = Counter()
    pending: list[ResultRow] = []
    # This chunk's rows by content hash: copies in its later batches take them before they are committed.
    unwritten: dict = {}
    read_s = score_s = write_s = 0.0
    clock = time.perf_counter
    stream = prefetch(_prepared(ctx, [chunk]), depth=2)
    try:
        waited = clock()
        for prepared in stream:
            scored = clock()
            read_s += scored - waited
            rows = _scored(ctx, prepared, chunk.scan_id, model_id, unwritten)
            _tally(counts, rows)
            pending.extend(rows)
            dedupe.remember(unwritten, rows, chunk.scan_id)
            if on_batch is not None:
                on_batch(rows)
            waited = clock()
            score_s += waited - scored
            if len(pending) >= FLUSH_ROWS and not prepared.tag.last:
                _write(ctx, chunk, model_id, pending, None)
                pending = []
                write_s += clock() - waited
                waited = clock()
    finally:
        stream.close()
    started = clock()
    _write(ctx, chunk, model_id, pending, counts)
    write_s += clock() - started
    return _result(chunk, counts, {"read": read_s, "score": score_s, "write": write_s})


def run_local_scan(
    ctx: ScanContext,
    scan_id: int,
    model_id: int,
    paths: Iterable[str],
    *,
    on_batch: ProgressHook | None = None,
    stop: threading.Event | None = None,
) -> bool:
    """Stream ``paths`` through the pipeline in this process.

    Chunks are recorded as they are reached.  Returns ``False`` if ``stop`` was
    set: the batch in flight is finished and committed first, so nothing
    half-written is left behind.
    """
    chunks = (Chunk(scan_id, seq, tuple(batch)) for seq, batch in enumerate(chunked(paths, ctx.settings.chunk_size)))
    counts: Counter = Counter()
    recorded: dict[int, int] = {}
    stream = prefetch(_prepared(ctx, chunks), depth=3)
    try:
        for prepared in stream:
            tag: _Tag = prepared.tag
            chunk = tag.chunk
            if tag.index == 0:
                counts = Counter()
                recorded[chunk.seq] = retry_db(
                    lambda: _add_chunk(ctx, chunk), deadline_s=ctx.settings.db_retry_seconds, what="recording a chunk"
                )
            chunk = Chunk(chunk.scan_id, chunk.seq, chunk.paths, recorded[chunk.seq])
            rows = _scored(ctx, prepared, scan_id, model_id)
            _tally(counts, rows)
            _write(ctx, chunk, model_id, rows, counts if tag.last else None)
            if tag.last:
                recorded.pop(chunk.seq, None)
            if on_batch is not None:
                on_batch(rows)
            if stop is not None and stop.is_set():
                return False
    finally:
        stream.close()
    return True


