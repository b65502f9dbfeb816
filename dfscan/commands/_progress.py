"""The one progress bar of a scan, on stderr: images/s, errors, and an ETA once the total is known.

The embedded scan feeds it each batch's rows as they are written; a fleet
scan followed with ``--wait`` feeds it the scan's summary as read from the
database. Either way it shows the same thing.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["ScanProgressBar"]


class ScanProgressBar:
    def __init__(self, count: Callable[[], int | None] | None = None) -> None:
        """``count``, when given, runs in a background thread to give the bar its total (and so an ETA)."""
        from tqdm import tqdm

        self.bar = tqdm(unit="img", dynamic_ncols=True, smoothing=0.1, file=sys.stderr)
        self.errors = 0
        if count is not None:
            threading.Thread(target=self._count, args=(count,), daemon=True, name="count").start()

    def _count(self, count: Callable[[], int | None]) -> None:
        try:
            total = count()
        except Exception:  # noqa: BLE001 - the bar just stays without a total
            return
        if total is not None:
            self.bar.total = total
            self.bar.refresh()

    def rows(self, rows: Sequence[Any]) -> None:
        """One batch of result rows was written (the embedded scan)."""
        self.errors += sum(1 for r in rows if r.status == "error")
        self.bar.set_postfix(errors=self.errors, refresh=False)
        self.bar.update(len(rows))

    def summary(self, summary: Any) -> None:
        """The scan's summary as the database has it (a fleet scan); closes the bar once the scan has ended."""
        if summary.walk_done:
            self.bar.total = summary.images_total
        self.bar.n = summary.total
        self.errors = summary.errors
        self.bar.set_postfix(errors=summary.errors, chunks_left=summary.chunks_queued, refresh=False)
        self.bar.refresh()
        if summary.status != "running":
            self.close()

    def close(self) -> None:
        self.bar.close()
