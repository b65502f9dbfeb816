"""What flows through the stages: a :class:`Batch` of :class:`Item`, one per path, each ending as one row.

A media stage claims the items it takes (images, videos) and gives each a
:class:`Payload`: what the model is to score (:meth:`Payload.inputs`) and
how the decisions on those inputs make the item's row (:meth:`Payload.row`).
An item that can't be scored carries its :class:`~dfscan.workers.reading.ImageError`;
one whose row is already known (an earlier file with the same bytes, a
``no-face`` image) carries that row.  :meth:`Batch.rows` gives every path
its one row, in the order of the paths.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Protocol

import numpy as np

from dfscan.db.records import ResultRow
from dfscan.workers.reading import ImageError

if TYPE_CHECKING:
    from dfscan.workers.scoring.verdict import Decision, Verdict

__all__ = ["Batch", "Input", "Item", "Payload", "TensorPayload"]


@dataclass(frozen=True)
class Input:
    """One thing the model scores: an image tensor (3, H, W) or a sequence (T, 3, H, W), and which graph takes it."""

    graph: str  # "image" or "sequence"
    array: np.ndarray


class Payload(Protocol):
    """What a media stage made of one file."""

    kind: str  # the row's kind: "image" or "video"

    def inputs(self) -> list[Input]:
        """The model's inputs, in the order :meth:`row` takes their decisions."""

    def row(self, item: "Item", decisions: "list[Decision]", verdict: "Verdict", now: datetime) -> ResultRow:
        """The item's row from one decision per input (never called with an error among them)."""


@dataclass
class TensorPayload:
    """A whole image as one tensor: the image's verdict is the tensor's."""

    tensor: np.ndarray
    kind: str = "image"

    def inputs(self) -> list[Input]:
        return [Input("image", self.tensor)]

    def row(self, item: "Item", decisions: "list[Decision]", verdict: "Verdict", now: datetime) -> ResultRow:
        (d,) = decisions
        return ResultRow(item.path, item.size, item.mtime, "ok", d.label, d.p_fake, d.confidence, None, None, now)


@dataclass
class Item:
    """One path on its way to its row."""

    path: str
    size: int | None = None
    mtime: float | None = None
    etag: str | None = None  # an object's ETag (None for a local file)
    content_hash: str | None = None  # SHA-256 of the bytes (None where they were not all read)
    kind: str = "image"
    stage: str | None = None  # the media stage that claimed it
    payload: Payload | None = None
    error: ImageError | None = None
    copy_of: int | None = None  # an earlier item of the batch with the same bytes: its row is this one's
    row: ResultRow | None = None  # decided without the model (a known verdict, no face)

    def fail(self, error: ImageError) -> None:
        self.error, self.payload = error, None

    def error_row(self, now: datetime) -> ResultRow:
        err = self.error
        assert err is not None, f"{self.path} has neither a row, a payload nor an error"
        extra = {"kind": "video"} if self.kind == "video" else {}
        return ResultRow.error_row(self.path, self.size, self.mtime, err.code, err.message, now, **extra)


@dataclass
class Batch:
    """The items of one batch, in the order of their paths; ``timings`` are seconds per stage."""

    items: list[Item]
    timings: dict[str, float] = field(default_factory=dict)
    result: list[ResultRow] | None = None  # every path's row, once the stages that decide them have run
    started: float = field(default_factory=time.perf_counter)  # when its first stage began (perf_counter)

    @classmethod
    def of(cls, paths: Sequence[str]) -> "Batch":
        return cls([Item(str(p)) for p in paths])

    @property
    def paths(self) -> list[str]:
        return [item.path for item in self.items]

    def claimed(self, stage: str) -> list[Item]:
        return [item for item in self.items if item.stage == stage]

    def to_score(self) -> list[Item]:
        """Items whose row the model decides: a payload, and neither a known row, an error nor an earlier copy."""
        return [it for it in self.items
                if it.payload is not None and it.row is None and it.error is None and it.copy_of is None]

    def rows(self, verdict: "Verdict", decisions: dict[int, "list[Decision | ImageError]"]) -> list[ResultRow]:
        """Every path's row, in order; ``decisions``: per item (by ``id``), one per input of its payload.

        A copy takes its original's row; every computed row carries its file's content hash and ETag.
        """
        now = datetime.now(timezone.utc)
        rows: list[ResultRow | None] = [None] * len(self.items)
        for i, item in enumerate(self.items):
            if item.copy_of is None or item.row is not None:
                rows[i] = self._own_row(item, verdict, decisions.get(id(item)), now)
        for i, item in enumerate(self.items):
            if rows[i] is None:
                original = rows[item.copy_of]  # type: ignore[index]
                assert original is not None, "a copy's original has no row"
                rows[i] = original.copied_to(item.path, item.size, item.mtime, source="copy", etag=item.etag)
        return rows  # type: ignore[return-value]

    @staticmethod
    def _own_row(item: Item, verdict: "Verdict", decided: "list[Decision | ImageError] | None",
                 now: datetime) -> ResultRow:
        if item.row is not None:
            return item.row
        if item.error is None and decided is not None:
            failed = next((d for d in decided if isinstance(d, ImageError)), None)
            if failed is not None:
                item.error = failed
            else:
                assert item.payload is not None
                row = item.payload.row(item, decided, verdict, now)  # type: ignore[arg-type]
                return _stamped(row, item)
        return _stamped(item.error_row(now), item)


def _stamped(row: ResultRow, item: Item) -> ResultRow:
    """The file's identity (content hash, ETag) on its row."""
    if item.content_hash or item.etag:
        return replace(row, content_hash=item.content_hash or row.content_hash, etag=item.etag or row.etag)
    return row
