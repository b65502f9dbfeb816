"""How many uploads are in flight, per API key and in all: past either limit, 429 with Retry-After.

An upload holds its body (up to ``max_upload_bytes``) and a share of the
batcher until its answer is sent, so the number in flight is what bounds the
server's memory, not the number of connections.  The count is taken before
the body is read: a refused request costs its headers only.  Everything runs
on the event loop's thread, so plain counters need no lock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from dfscan.serve.errors import TooManyRequests

__all__ = ["UploadSlots"]

# Seconds a refused upload is told to wait: uploads take well under a second or two when the server keeps up.
RETRY_AFTER_S = 1


class UploadSlots:
    def __init__(self, *, per_key: int, total: int, on_change: Callable[[int], object] | None = None) -> None:
        self.per_key = per_key
        self.total = total
        self.on_change = on_change  # sees the number in flight after each change (a gauge)
        self._held: Counter[int] = Counter()
        self._total = 0

    @property
    def in_flight(self) -> int:
        return self._total

    @contextmanager
    def hold(self, key_id: int) -> Iterator[None]:
        """One upload of ``key_id`` in flight while the block runs; TooManyRequests past a limit."""
        if self._held[key_id] >= self.per_key:
            raise TooManyRequests(f"this API key already has {self.per_key} uploads in flight: wait for one to be "
                                  f"answered", RETRY_AFTER_S)
        if self.in_flight >= self.total:
            raise TooManyRequests(f"the server has {self.total} uploads in flight: try again shortly", RETRY_AFTER_S)
        self._change(key_id, +1)
        try:
            yield
        finally:
            self._change(key_id, -1)

    def _change(self, key_id: int, by: int) -> None:
        self._held[key_id] += by
        if not self._held[key_id]:
            del self._held[key_id]
        self._total += by
        if self.on_change is not None:
            self.on_change(self._total)
