"""Read and decode paths into batches ready for the runtime, and score them into rows."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import numpy as np

from dfscan.db.records import ResultRow
from dfscan.trt.base import Runtime, run_batched, softmax
from dfscan.trt.errors import InferenceFailed
from dfscan.trt.model_info import TEMPERATURE_RANGE
from dfscan.workers.scoring.dedupe import content_hash
from dfscan.workers.reading.errors import ImageError
from dfscan.workers.images.decode import refuse_from_header
from dfscan.workers.reading.reader import MAX_FILE_BYTES, FileData, read_head, stat_quietly

# Bytes of file content a worker holds at once beyond each file's first
# HEAD_BYTES (reader.py): files over the head are read in rounds that fit this
# budget, each round decoded (and its bytes dropped) before the next is read.
# Batches waiting in the prefetch queue hold decoded tensors only, never file
# bytes.  A file larger than the whole budget is an error row.
READ_BUDGET_BYTES = 2 * MAX_FILE_BYTES


@dataclass
class PreparedBatch:
    """One batch after reading and decoding, before inference.

    ``tensors`` holds the images that decoded, in the order of ``ok_index``
    (their positions in ``paths``); every other position has an entry in
    ``errors``, or in ``copy_of`` (its bytes are those of an earlier position
    of the batch, whose row it takes: :mod:`workers.dedupe`).  Each path is in
    exactly one of the three.  ``hashes`` holds each file's content hash (None
    where its bytes were not all read; empty when nothing was hashed), ``etags``
    each object's ETag (None for a local file; empty when no path had one).
    """

    paths: list[str]
    sizes: list[int | None]
    mtimes: list[float | None]
    tensors: np.ndarray | None
    ok_index: list[int]
    errors: dict[int, ImageError] = field(default_factory=dict)
    # Set by the caller that knows about chunks.
    tag: object = None
    # A decoder that makes several tensors per image (the face stage, workers.faces) leaves
    # ``tensors`` None, puts its per-image items here and scores them with ``scorer``.
    items: list | None = None
    scorer: object = None
    # A batch of images and videos: each kind prepared on its own, ``(positions, part)`` per kind;
    # :func:`score` puts their rows back in the order of ``paths``.
    parts: list[tuple[list[int], "PreparedBatch"]] | None = None
    hashes: list[str | None] = field(default_factory=list)
    copy_of: dict[int, int] = field(default_factory=dict)
    etags: list[str | None] = field(default_factory=list)

    def etag(self, i: int) -> str | None:
        return self.etags[i] if self.etags else None

    def subset(self, keep: Sequence[int]) -> "PreparedBatch":
        """The batch of positions ``keep`` only (copies kept with their originals), tensors and items included."""
        index = {old: new for new, old in enumerate(keep)}
        rows = [k for k, pos in enumerate(self.ok_index) if pos in index]
        tensors = self.tensors
        if tensors is not None and len(rows) != len(self.ok_index):
            tensors = tensors[rows] if rows else None
        return PreparedBatch(
            [self.paths[i] for i in keep], [self.sizes[i] for i in keep], [self.mtimes[i] for i in keep], tensors,
            [index[p] for p in self.ok_index if p in index], {index[p]: e for p, e in self.errors.items() if p in index},
            tag=self.tag, items=None if self.items is None else [self.items[k] for k in rows], scorer=self.scorer,
            hashes=[self.hashes[i] for i in keep] if self.hashes else [],
            copy_of={index[c]: index[o] for c, o in self.copy_of.items() if c in index},
            etags=[self.etags[i] for i in keep] if self.etags else [],
        )


@dataclass(frozen=True)
class Verdict:
    """How logits become a label: class order, temperature, and threshold on p(fake)."""

    classes: tuple[str, ...] = ("real", "fake")
    threshold: float = 0.5
    temperature: float = 1.0

    def __post_init__(self) -> None:
        # The sidecar is checked when it is read; this catches a Verdict made any other way.
        low, high = TEMPERATURE_RANGE
        if not (math.isfinite(self.temperature) and low <= self.temperature <= high):
            raise ValueError(f"temperature must be between {low:g} and {high:g}, got {self.temperature!r}")
        if not (math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold!r}")

    def rows(self, logits: np.ndarray) -> list[tuple[str, float, float] | ImageError]:
        """(label, p_fake, confidence) per row of logits; an ``ImageError`` where p_fake is not a probability.

        A NaN compares false with any threshold: unchecked, it would be stored
        as a confident ``real`` verdict.
        """
        with np.errstate(all="ignore"):
            probs = softmax(logits, self.temperature)
        fake_col = self.classes.index("fake")
        out: list[tuple[str, float, float] | ImageError] = []
        for p_fake in probs[:, fake_col]:
            p = float(p_fake)
            if not (math.isfinite(p) and 0.0 <= p <= 1.0):
                out.append(ImageError("bad-probability", f"the model gave p_fake = {p!r}, not a probability"))
                continue
            label = "fake" if p >= self.threshold else "real"
            out.append((label, p, p if label == "fake" else 1.0 - p))
        return out


class BatchMaker:
    """Reads files in a thread pool and decodes them with ``decoder``, within a byte budget.

    Each file's header is read first (:data:`reader.HEAD_BYTES`); a file whose
    header is no image, or declares more pixels than the limit, is refused on
    it.  The rest of larger files is read in rounds whose bytes fit
    ``budget_bytes``; each round is decoded before the next is read, so a batch
    of 64 sparse 255 MB "photos" never holds more than the budget.
    """

    def __init__(
        self,
        decoder,
        read_threads: int = 8,
        max_file_bytes: int = MAX_FILE_BYTES,
        budget_bytes: int = READ_BUDGET_BYTES,
        store=None,
        video=None,
    ) -> None:
        self.decoder = decoder
        self.store = store  # reads s3:// paths (scanner.objects.ObjectStore; None: the default endpoint)
        # The video stage (workers.video_stage.VideoStage) takes the paths it ``wants``; they are
        # never read here: the video decoder opens them itself and reads what it needs.
        self.video = video
        self.max_file_bytes = max_file_bytes
        self.budget_bytes = budget_bytes
        pre = getattr(decoder, "pre", None)
        self.max_pixels: int | None = getattr(pre, "max_pixels", None)
        self._pool = ThreadPoolExecutor(max_workers=read_threads, thread_name_prefix="read")
        # One batch is read and decoded at a time (the prefetch thread's), so the budget
        # holds per worker even if two scans share this maker.
        self._one_at_a_time = threading.Lock()

    def prepare(self, paths: Sequence[str]) -> PreparedBatch:
        with self._one_at_a_time:
            videos = [i for i, p in enumerate(paths) if self.video is not None and self.video.wants(p)]
            if not videos:
                return self._prepare(paths)
            if len(videos) == len(paths):
                return self.video.prepare(paths)
            taken = set(videos)
            images = [i for i in range(len(paths)) if i not in taken]
            parts = [(images, self._prepare([paths[i] for i in images])),
                     (videos, self.video.prepare([paths[i] for i in videos]))]
            sizes: list[int | None] = [None] * len(paths)
            mtimes: list[float | None] = [None] * len(paths)
            etags: list[str | None] = [None] * len(paths)
            for positions, part in parts:
                for pos, size, mtime in zip(positions, part.sizes, part.mtimes):
                    sizes[pos], mtimes[pos] = size, mtime
                for pos, etag in zip(positions, part.etags):
                    etags[pos] = etag
            return PreparedBatch(list(paths), sizes, mtimes, None, [], {}, parts=parts,
                                 etags=etags if any(etags) else [])

    def cost(self, path: str) -> int:
        """What ``path`` weighs in a batch of ``batch_size``: 1 for an image, its frames for a video."""
        return self.video.cost(path) if self.video is not None else 1

    def _prepare(self, paths: Sequence[str]) -> PreparedBatch:
        heads = list(self._pool.map(self._head, paths))
        outcome: dict[int, FileData | ImageError | np.ndarray] = {}
        complete: list[int] = []
        rest: list[int] = []
        # Content hashes of the files read whole; a file whose bytes an earlier one had is a copy, not decoded.
        hashes: list[str | None] = [None] * len(paths)
        first: dict[str, int] = {}
        copy_of: dict[int, int] = {}

        def hashed_copies(positions: list[int], datas: Iterable[bytes]) -> set[int]:
            copies = set()
            for i, digest in zip(positions, self._pool.map(content_hash, datas)):
                hashes[i] = digest
                if first.setdefault(digest, i) != i:
                    copy_of[i] = first[digest]
                    copies.add(i)
            return copies

        whole = [i for i, h in enumerate(heads) if not isinstance(h, ImageError) and len(h.data) >= h.size]
        copies = hashed_copies(whole, (heads[i].data for i in whole))  # type: ignore[union-attr]
        for i, item in enumerate(heads):
            if isinstance(item, ImageError):
                outcome[i] = item
            elif i in copies:
                continue
            elif (refusal := refuse_from_header(item.data, self.max_pixels)) is not None:
                outcome[i] = refusal
            elif len(item.data) >= item.size:
                complete.append(i)
            elif item.size > self.budget_bytes:
                outcome[i] = ImageError(
                    "too-large",
                    f"file is {item.size} bytes, over the worker's read budget of {self.budget_bytes} bytes",
                )
            else:
                rest.append(i)
        # Round 1 decodes the small files with the first big ones; every round fits the budget.
        round_ = complete
        while True:
            spent = 0
            take: list[int] = []
            while rest and spent + heads[rest[0]].size <= self.budget_bytes:  # type: ignore[union-attr]
                i = rest.pop(0)
                spent += heads[i].size  # type: ignore[union-attr]
                take.append(i)
            full = dict(zip(take, self._pool.map(lambda i: self._whole(paths[i], heads[i]), take)))
            files = [i for i in take if not isinstance(full[i], ImageError)]
            copies = hashed_copies(files, (full[i].data for i in files))  # type: ignore[union-attr]
            files = [i for i in files if i not in copies]
            outcome.update({i: full[i] for i in take if isinstance(full[i], ImageError)})
            todo = round_ + files
            sources = [heads[i] if i in round_ else full[i] for i in todo]
            if todo:
                for i, out in zip(todo, self.decoder.decode_batch(sources)):
                    outcome[i] = out
            del full, sources
            if not rest:
                break
            round_ = []
        sizes: list[int | None] = []
        mtimes: list[float | None] = []
        etags: list[str | None] = []
        errors: dict[int, ImageError] = {}
        tensors = []
        ok_index = []
        for i, path in enumerate(paths):
            head, out = heads[i], outcome.get(i)
            if isinstance(head, ImageError):
                size, mtime = stat_quietly(path)
            else:
                size, mtime = head.size, head.mtime
            sizes.append(size)
            mtimes.append(mtime)
            etags.append(None if isinstance(head, ImageError) else head.etag)
            if out is None:  # a copy
                continue
            if isinstance(out, ImageError):
                errors[i] = out
            else:
                tensors.append(out)
                ok_index.append(i)
        etags = etags if any(etags) else []
        if getattr(self.decoder, "per_image", False):
            return PreparedBatch(list(paths), sizes, mtimes, None, ok_index, errors, items=tensors,
                                 scorer=self.decoder.score, hashes=hashes, copy_of=copy_of, etags=etags)
        stacked = np.stack(tensors) if tensors else None
        return PreparedBatch(list(paths), sizes, mtimes, stacked, ok_index, errors, hashes=hashes, copy_of=copy_of,
                             etags=etags)

    def _head(self, path: str) -> FileData | ImageError:
        try:
            return read_head(path, self.max_file_bytes, store=self.store)
        except ImageError as exc:
            return exc

    def _whole(self, path: str, head: FileData) -> FileData | ImageError:
        """The whole file, no more than the size its head saw (the budget was reserved for that)."""
        try:
            f = read_head(path, self.max_file_bytes, head_bytes=head.size, store=self.store)
        except ImageError as exc:
            return exc
        if f.size != head.size or len(f.data) != head.size:
            return ImageError("unreadable", f"file changed size while being read ({head.size} -> {f.size} bytes)")
        return f

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for stage in (self.decoder, self.video):
            close = getattr(stage, "close", None)
            if close is not None:
                close()


def score(prepared: PreparedBatch, runtime: Runtime, verdict: Verdict) -> list[ResultRow]:
    """Rows for every path of ``prepared``, in order: verdicts for decoded images, errors for the rest.

    A runtime failure on the batch makes every image of it an error row; the
    scan goes on.  Copies (``prepared.copy_of``) take their original's row;
    every row carries its file's content hash.
    """
    if prepared.parts is not None:
        rows: list[ResultRow | None] = [None] * len(prepared.paths)
        for positions, part in prepared.parts:
            for pos, row in zip(positions, score(part, runtime, verdict)):
                rows[pos] = row
        assert all(row is not None for row in rows), "a part left a path without a row"
        return rows  # type: ignore[return-value]
    if prepared.copy_of:
        unique = [i for i in range(len(prepared.paths)) if i not in prepared.copy_of]
        mine = dict(zip(unique, score(prepared.subset(unique), runtime, verdict)))
        return [mine[i] if i in mine else mine[prepared.copy_of[i]].copied_to(
                    path, prepared.sizes[i], prepared.mtimes[i], source="copy", etag=prepared.etag(i))
                for i, path in enumerate(prepared.paths)]
    rows = prepared.scorer(prepared, runtime, verdict) if prepared.scorer is not None else _score(prepared, runtime,
                                                                                                     verdict)
    hashes = prepared.hashes if any(prepared.hashes) else None
    if hashes is None and not prepared.etags:
        return rows
    # The file's identity (content hash, object ETag) goes on its row in one pass: one copy of each row.
    out = []
    for i, row in enumerate(rows):
        h, e = hashes[i] if hashes else None, prepared.etag(i)
        out.append(replace(row, content_hash=h or row.content_hash, etag=e or row.etag) if h or e else row)
    return out


def _score(prepared: PreparedBatch, runtime: Runtime, verdict: Verdict) -> list[ResultRow]:
    now = datetime.now(timezone.utc)
    errors = dict(prepared.errors)
    verdicts: dict[int, tuple[str, float, float]] = {}
    if prepared.tensors is not None:
        try:
            logits = run_batched(runtime, prepared.tensors)
            if logits.shape[0] != len(prepared.ok_index) or not np.all(np.isfinite(logits)):
                raise InferenceFailed(f"runtime returned {logits.shape} non-finite or misshapen logits")
        except InferenceFailed as exc:
            for pos in prepared.ok_index:
                errors[pos] = ImageError("inference-failed", f"inference failed: {exc}")
        else:
            for pos, v in zip(prepared.ok_index, verdict.rows(logits)):
                if isinstance(v, ImageError):
                    errors[pos] = v
                else:
                    verdicts[pos] = v
    rows = []
    for i, path in enumerate(prepared.paths):
        size, mtime = prepared.sizes[i], prepared.mtimes[i]
        if i in verdicts:
            label, p_fake, conf = verdicts[i]
            rows.append(ResultRow(path, size, mtime, "ok", label, p_fake, conf, None, None, now))
        else:
            err = errors[i]
            rows.append(ResultRow.error_row(path, size, mtime, err.code, err.message, now))
    return rows


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
