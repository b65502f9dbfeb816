"""Dynamic batching: images from concurrent requests scored together, as Triton does.

Requests put their decoded images on one asyncio queue. A collector takes the
first waiting image, then more until ``max_batch`` are taken or ``max_delay_s``
has passed since that first image arrived, and hands the batch to the one
inference thread. While a batch runs, the next one fills, so under load
batches come out full without waiting at all: 64 clients sending one image
each cost about one batch, not 64.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from dfscan.trt.base import Runtime
from dfscan.workers.reading import ImageError
from dfscan.workers.scoring import Decision, Verdict, infer

__all__ = ["DynamicBatcher"]
BatchHook = Callable[[int, list[float]], None]  # batch size, queue waits (s)


@dataclass
class _Item:
    tensor: np.ndarray
    future: asyncio.Future
    queued_at: float


class DynamicBatcher:
    def __init__(self, runtime: Runtime, verdict: Verdict, *, max_batch: int, max_delay_s: float,
                 on_batch: BatchHook | None = None) -> None:
        self.runtime = runtime
        self.verdict = verdict
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
        self._running = 0  # images in the batch being scored

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="batcher")

    async def stop(self) -> None:
        """Finish what is queued, then stop (graceful shutdown: in-flight requests get their verdicts)."""
        if self._task is None or self._queue is None:
            return
        while not self._queue.empty() or self._running:
            await asyncio.sleep(0.01)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._pool.shutdown(wait=True)

    async def score(self, tensors: list[np.ndarray]) -> list[Decision | ImageError]:
        """Verdicts for ``tensors`` (one request's decoded images), in order."""
        assert self._queue is not None, "batcher not started"
        loop = asyncio.get_running_loop()
        items = [_Item(t, loop.create_future(), time.monotonic()) for t in tensors]
        for item in items:
            self._queue.put_nowait(item)
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _collect(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            deadline = first.queued_at + self.max_delay_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout=left))
                except TimeoutError:
                    break
            started = time.monotonic()
            live = [item for item in batch if not item.future.done()]  # a client that went away
            if not live:
                continue
            self._running = len(live)
            try:
                results = await loop.run_in_executor(self._pool, self._infer, np.stack([i.tensor for i in live]))
            finally:
                self._running = 0
            for item, result in zip(live, results):
                if not item.future.done():
                    item.future.set_result(result)
            if self.on_batch is not None:
                self.on_batch(len(live), [started - item.queued_at for item in live])

    def _infer(self, tensors: np.ndarray) -> list[Decision | ImageError]:
        """One batch on the inference thread (the scan's :func:`infer`); a failure is every image's error."""
        try:
            return infer(self.runtime, list(tensors), self.verdict, per_call=len(tensors))
        except Exception as exc:  # noqa: BLE001 - a runtime bug fails this batch's images, not the server
            return [ImageError("inference-failed", f"inference failed: {type(exc).__name__}: {exc}")] * len(tensors)
