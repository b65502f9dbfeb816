"""The stage protocol and the one table of stages every item goes through.

A stage is a module with one small interface (:class:`Stage`): ``run(batch,
job)`` does its work on the items of a :class:`~dfscan.workers.scoring.stages.Batch`.
Stages of the ``prepare`` phase work on files (read, decode, sample, detect)
and run ahead of the model in the prefetch thread; stages of the ``score``
phase run in order in the scoring thread (look up known verdicts, run the
model).  :data:`STAGES` lists them in order, each with the factory that makes
it for a scan (or None where the scan doesn't use it: videos off).  The loop
walks :class:`Stages`; it never asks which stages exist.  Adding a stage is a
module and one entry in :data:`STAGES`.

What flows through them is a :class:`Batch` of :class:`Item`, one per path,
each ending as one row.  A media stage claims the items it takes (images,
videos) and gives each a :class:`Payload`: what the model is to score
(:meth:`Payload.inputs`) and how the decisions on those inputs make the
item's row (:meth:`Payload.row`).  An item that can't be scored carries its
:class:`~dfscan.workers.reading.ImageError`; one whose row is already known
(an earlier file with the same bytes) carries that row.  :meth:`Batch.rows`
gives every path its one row, in the order of the paths.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from dfscan.db.records import ResultRow
from dfscan.workers.reading import ImageError

if TYPE_CHECKING:
    from dfscan.workers.scoring.context import Resources
    from dfscan.workers.scoring.verdict import Decision, Verdict

__all__ = ["PHASES", "STAGES", "Batch", "Input", "Item", "Job", "Payload", "Stage", "StageEntry", "Stages",
           "TensorPayload"]


@dataclass(frozen=True)
class Input:
    """One thing the model scores: an image tensor (3, H, W) or a sequence (T, 3, H, W), and which graph takes it.

    ``array`` is NumPy, or with ``--batches device`` a torch tensor on the runtime's device (workers.scoring.tensors).
    """

    graph: str  # "image" or "sequence"
    array: np.ndarray


class Stamp(Protocol):
    """What a stage learnt of an item that its row carries (workers.scoring.hashes.Hashed)."""

    def stamp(self, row: ResultRow) -> ResultRow: ...


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
    hashes: "Stamp | None" = None  # its perceptual hashes and bank matches (workers.scoring.hashes)
    provenance: "Stamp | None" = None  # what it says of its own origin (workers.scoring.provenance)

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
            return _stamps(item.row, item)
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
    """The file's identity (content hash, ETag, perceptual hashes and bank matches) on its row."""
    if item.content_hash or item.etag:
        row = replace(row, content_hash=item.content_hash or row.content_hash, etag=item.etag or row.etag)
    return _stamps(row, item)


def _stamps(row: ResultRow, item: Item) -> ResultRow:
    """What the stages learnt of the file (hashes, provenance) on its row."""
    for stamp in (item.hashes, item.provenance):
        if stamp is not None:
            row = stamp.stamp(row)
    return row


PHASES = ("prepare", "score")


@dataclass
class Job:
    """What the score-phase stages know of the work: the scan, the model and the known verdicts' lookup."""

    scan_id: int
    model_id: int
    verdict: "Verdict"
    # Content hash -> known verdict (workers.scoring.dedupe); None: no lookup (a bare batch).
    lookup: Callable[[list[str]], dict] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The real roots a scan that follows no symbolic link reads under (scanner.confine); None: not confined.
    # The prepare-phase stages open files with it.
    roots: tuple[str, ...] | None = None


class Stage(Protocol):
    name: str
    phase: str  # one of PHASES

    def run(self, batch: Batch, job: Job | None) -> None:
        """Do this stage's work on ``batch``'s items (per-item failures become the item's error, never raise)."""

    def cost(self, path: str) -> int | None:
        """What ``path`` weighs in a batch of ``batch_size`` if this stage takes it (None: not this stage's)."""

    def record(self) -> dict | None:
        """What the scan's worker record says of this stage (None: nothing)."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class StageEntry:
    name: str
    make: Callable[["Resources"], Stage | None]
    description: str


def _video(res: "Resources") -> Stage | None:
    from dfscan.workers.scoring.tensors import device_video_stage
    from dfscan.workers.scoring.video_stage import video_stage

    return device_video_stage(video_stage(res), res)


def _images(res: "Resources") -> Stage | None:
    from dfscan.workers.scoring.images import image_stage

    return image_stage(res)


def _known(res: "Resources") -> Stage | None:
    from dfscan.workers.scoring.dedupe import KnownStage

    return KnownStage(res.settings.face_aggregation)


def _hash(res: "Resources") -> Stage | None:
    from dfscan.workers.scoring.hashes import hash_stage

    return hash_stage(res)


def _match(res: "Resources") -> Stage | None:
    from dfscan.workers.scoring.matches import match_stage

    return match_stage(res) if res.settings.pdq else None


def _provenance(res: "Resources") -> Stage | None:
    from dfscan.workers.scoring.provenance import provenance_stage

    return provenance_stage(res)


def _infer(res: "Resources") -> Stage | None:
    from dfscan.workers.scoring.verdict import InferStage

    return InferStage(res.runtimes, res.verdict, res.settings.batch_size)


# In order: media stages claim their items first (videos by extension, images the rest).
STAGES: tuple[StageEntry, ...] = (
    StageEntry("video", _video, "videos: T frames sampled, faces followed (faces on), sequences made"),
    StageEntry("images", _images, "images: read, hashed, copies found, decoded (faces on: detected and cropped)"),
    StageEntry("hash", _hash, "images and whole video frames: PDQ from the decoded pixels (off: DFSCAN_PDQ=0)"),
    StageEntry("provenance", _provenance, "images and videos: C2PA manifest (never fetched), IPTC/XMP, generator "
                                          "settings, invisible watermark (off: DFSCAN_PROVENANCE=0)"),
    StageEntry("known", _known, "files whose bytes already have a row in this scan (or, reusing, an earlier one)"),
    StageEntry("match", _match, "every hash against the enabled hash banks (faiss), before the model"),
    StageEntry("infer", _infer, "every input through the model in bounded calls; the one verdict"),
)


class Stages:
    """The scan's stages, made from :data:`STAGES`; what the loop runs."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = list(stages)
        for stage in self.stages:
            assert stage.phase in PHASES, f"stage {stage.name!r} has phase {stage.phase!r}"
            # Timings are keyed by stage and by phase (and "total", "runtime"): a stage's name is none of those.
            assert stage.name not in (*PHASES, "total", "runtime"), f"a stage may not be named {stage.name!r}"

    @classmethod
    def build(cls, res: "Resources", table: Sequence[StageEntry] = STAGES) -> "Stages":
        made: list[Stage] = []
        try:
            for entry in table:
                stage = entry.make(res)
                if stage is not None:
                    made.append(stage)
        except BaseException:
            for stage in made:
                stage.close()
            raise
        return cls(made)

    def get(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)

    def cost(self, path: str) -> int:
        for stage in self.stages:
            weight = stage.cost(path)
            if weight is not None:
                return weight
        return 1

    def prepare(self, paths: Sequence[str], job: Job | None = None) -> Batch:
        """The prepare phase (files: read, decode, sample, detect) on a new batch of ``paths``."""
        batch = Batch.of(paths)
        self._run(batch, job, "prepare")
        return batch

    def run(self, paths: Sequence[str], job: Job | None = None) -> Batch:
        """Both phases on ``paths`` at once (no prefetch): the batch, its rows in ``batch.result``."""
        batch = self.prepare(paths, job)
        self.score(batch, job)
        return batch

    def score(self, batch: Batch, job: Job | None = None) -> None:
        """The score phase (known verdicts, the model) on a prepared batch; its rows are then ``batch.result``."""
        self._run(batch, job, "score")
        assert batch.result is not None and len(batch.result) == len(batch.items), "a path was left without a row"

    def _run(self, batch: Batch, job: Job | None, phase: str) -> None:
        """Each stage of ``phase`` in order; its seconds under its name, the phase's under the phase's name."""
        clock = time.perf_counter
        began = clock()
        for stage in self.stages:
            if stage.phase == phase:
                started = clock()
                stage.run(batch, job)
                batch.timings[stage.name] = batch.timings.get(stage.name, 0.0) + clock() - started
        batch.timings[phase] = batch.timings.get(phase, 0.0) + clock() - began

    def records(self) -> dict[str, dict]:
        out = {}
        for stage in self.stages:
            record = stage.record()
            if record is not None:
                out[stage.name] = record
        return out

    def close(self) -> None:
        for stage in self.stages:
            stage.close()
