"""The batch pipeline: chunks of paths in, one committed result row per path out.

:func:`score_chunk` is the unit a Celery task calls; :func:`run_local_scan`
is the embedded default, which streams every chunk of a walk through the same
steps in one process.  Both overlap reading and decoding (a background thread,
:func:`workers.batches.prefetch`) with inference, and both commit one
transaction per batch: the upsert of its rows and, with the chunk's last
batch, the chunk's completion.  Memory: a batch waiting in the prefetch queue holds
its decoded tensors only (64 x 3 x 224 x 224 float32, 38 MB); file bytes exist
only while :meth:`workers.batches.BatchMaker.prepare` reads and decodes, within
its byte budget.  Re-running any batch or chunk rewrites the
same rows, never adds to them.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from dfscan import db
from dfscan.db.chunks import retry_db
from dfscan.db.records import ResultRow
from dfscan.scanner.chunks import Chunk, chunked
from dfscan.workers import dedupe
from dfscan.workers.batches import PreparedBatch, prefetch, score, split
from dfscan.workers.context import ScanContext

ProgressHook = Callable[[list[ResultRow]], None]


@dataclass(frozen=True)
class ChunkResult:
    scan_id: int
    chunk_id: int | None
    total: int
    ok: int
    real: int
    fake: int
    errors: int


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


def _result(chunk: Chunk, counts: Counter) -> ChunkResult:
    return ChunkResult(
        chunk.scan_id, chunk.chunk_id, counts["total"], counts["ok"], counts["real"], counts["fake"], counts["errors"]
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
    """Commit one batch's rows (and, with the last batch, the chunk's end) in one transaction.

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


def _scored(ctx: ScanContext, prepared: PreparedBatch, scan_id: int, model_id: int) -> list[ResultRow]:
    """Rows of a batch, each distinct content scored once (:mod:`workers.dedupe`).

    Before inference, one query asks which of the batch's content hashes this
    scan (or, with ``reuse_verdicts``, an earlier scan of this model) already
    has a verdict for; those files take it, the rest go to :func:`score`.
    """

    def lookup(hashes: list[str]) -> dict:
        def read() -> dict:
            with ctx.sessions() as session:
                return db.known_verdicts(session, scan_id=scan_id, model_id=model_id, hashes=hashes,
                                         reuse=ctx.reuse_verdicts, faces=ctx.faces_record() is not None)

        return retry_db(read, deadline_s=ctx.settings.db_retry_seconds, what=f"looking up copies in scan {scan_id}")

    if prepared.parts is not None:  # images and videos: each kind looked up on its own (videos have no hash)
        rows: list[ResultRow | None] = [None] * len(prepared.paths)
        for positions, part in prepared.parts:
            for pos, row in zip(positions, _scored(ctx, part, scan_id, model_id)):
                rows[pos] = row
        return rows  # type: ignore[return-value]
    options = getattr(ctx.batches.decoder, "options", None)
    batch = dedupe.plan(prepared, lookup, scan_id, ctx.verdict, getattr(options, "aggregation", "max"))
    return batch.rows(score(batch.todo, ctx.runtime, ctx.verdict) if batch.todo.paths else [])


def _add_chunk(ctx: ScanContext, chunk: Chunk) -> int:
    with ctx.sessions.begin() as session:
        return db.add_chunk(session, scan_id=chunk.scan_id, seq=chunk.seq, paths=list(chunk.paths))


def score_chunk(ctx: ScanContext, chunk: Chunk, model_id: int, on_batch: ProgressHook | None = None) -> ChunkResult:
    """Score every path of ``chunk`` and commit its rows; the chunk ends ``done``."""
    counts: Counter = Counter()
    if not chunk.paths:
        _write(ctx, chunk, model_id, [], counts)
        return _result(chunk, counts)
    for prepared in prefetch(_prepared(ctx, [chunk]), depth=2):
        rows = _scored(ctx, prepared, chunk.scan_id, model_id)
        _tally(counts, rows)
        _write(ctx, chunk, model_id, rows, counts if prepared.tag.last else None)
        if on_batch is not None:
            on_batch(rows)
    return _result(chunk, counts)


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


