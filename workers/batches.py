"""Read and decode paths into batches ready for the runtime, and score them into rows."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from dfscan.db.records import ResultRow
from dfscan.trt.base import Runtime, run_batched, softmax
from dfscan.trt.errors import InferenceFailed
from dfscan.workers.errors import ImageError
from dfscan.workers.reader import MAX_FILE_BYTES, FileData, read_file, stat_quietly


@dataclass
class PreparedBatch:
    """One batch after reading and decoding, before inference.

    ``tensors`` holds the images that decoded, in the order of ``ok_index``
    (their positions in ``paths``); every other position has an entry in
    ``errors``.  Each path is in exactly one of the two.
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


@dataclass(frozen=True)
class Verdict:
    """How logits become a label: class order, temperature, and threshold on p(fake)."""

    classes: tuple[str, ...] = ("real", "fake")
    threshold: float = 0.5
    temperature: float = 1.0

    def rows(self, logits: np.ndarray) -> list[tuple[str, float, float]]:
        """(label, p_fake, confidence) per row of logits."""
        probs = softmax(logits, self.temperature)
        fake_col = self.classes.index("fake")
        out = []
        for p_fake in probs[:, fake_col]:
            p = float(p_fake)
            label = "fake" if p >= self.threshold else "real"
            out.append((label, p, p if label == "fake" else 1.0 - p))
        return out


class BatchMaker:
    """Reads files in a thread pool and decodes them with ``decoder``."""

    def __init__(self, decoder, read_threads: int = 8, max_file_bytes: int = MAX_FILE_BYTES) -> None:
        self.decoder = decoder
        self.max_file_bytes = max_file_bytes
        self._pool = ThreadPoolExecutor(max_workers=read_threads, thread_name_prefix="read")

    def prepare(self, paths: Sequence[str]) -> PreparedBatch:
        read = list(self._pool.map(self._read, paths))
        sizes: list[int | None] = []
        mtimes: list[float | None] = []
        errors: dict[int, ImageError] = {}
        files: list[FileData] = []
        file_pos: list[int] = []
        for i, (path, item) in enumerate(zip(paths, read)):
            if isinstance(item, ImageError):
                size, mtime = stat_quietly(path)
                sizes.append(size)
                mtimes.append(mtime)
                errors[i] = item
            else:
                sizes.append(item.size)
                mtimes.append(item.mtime)
                files.append(item)
                file_pos.append(i)
        decoded = self.decoder.decode_batch(files) if files else []
        tensors = []
        ok_index = []
        for pos, out in zip(file_pos, decoded):
            if isinstance(out, ImageError):
                errors[pos] = out
            else:
                tensors.append(out)
                ok_index.append(pos)
        if getattr(self.decoder, "per_image", False):
            return PreparedBatch(list(paths), sizes, mtimes, None, ok_index, errors, items=tensors,
                                 scorer=self.decoder.score)
        stacked = np.stack(tensors) if tensors else None
        return PreparedBatch(list(paths), sizes, mtimes, stacked, ok_index, errors)

    def _read(self, path: str) -> FileData | ImageError:
        try:
            return read_file(path, self.max_file_bytes)
        except ImageError as exc:
            return exc

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        close = getattr(self.decoder, "close", None)
        if close is not None:
            close()


def score(prepared: PreparedBatch, runtime: Runtime, verdict: Verdict) -> list[ResultRow]:
    """Rows for every path of ``prepared``, in order: verdicts for decoded images, errors for the rest.

    A runtime failure on the batch makes every image of it an error row; the
    scan goes on.
    """
    if prepared.scorer is not None:
        return prepared.scorer(prepared, runtime, verdict)
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
            verdicts = dict(zip(prepared.ok_index, verdict.rows(logits)))
    rows = []
    for i, path in enumerate(prepared.paths):
        size, mtime = prepared.sizes[i], prepared.mtimes[i]
        if i in verdicts:
            label, p_fake, conf = verdicts[i]
            rows.append(ResultRow(path, size, mtime, "ok", label, p_fake, conf, None, None, now))
        else:
            err = errors[i]
            rows.append(ResultRow(path, size, mtime, "error", None, None, None, err.message, err.code, now))
    return rows


def split(paths: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(paths), size):
        yield paths[start : start + size]


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
