"""The stage protocol and the one table of stages every item goes through.

A stage is a module with one small interface (:class:`Stage`): ``run(batch,
job)`` does its work on the items of a :class:`~dfscan.workers.scoring.items.Batch`.
Stages of the ``prepare`` phase work on files (read, decode, sample, detect)
and run ahead of the model in the prefetch thread; stages of the ``score``
phase run in order in the scoring thread (look up known verdicts, run the
model).  :data:`STAGES` lists them in order, each with the factory that makes
it for a scan (or None where the scan doesn't use it: videos off).  The loop
walks :class:`Stages`; it never asks which stages exist.  Adding a stage is a
module and one entry in :data:`STAGES`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from dfscan.workers.scoring.items import Batch

if TYPE_CHECKING:
    from dfscan.workers.scoring.context import Resources
    from dfscan.workers.scoring.verdict import Verdict

__all__ = ["PHASES", "STAGES", "Job", "Stage", "StageEntry", "Stages"]

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
    from dfscan.workers.scoring.video_stage import video_stage

    return video_stage(res)


def _images(res: "Resources") -> Stage | None:
    from dfscan.workers.scoring.images import image_stage

    return image_stage(res)


def _known(res: "Resources") -> Stage | None:
    from dfscan.workers.scoring.dedupe import KnownStage

    return KnownStage(res.settings.face_aggregation)


def _infer(res: "Resources") -> Stage | None:
    from dfscan.workers.scoring.infer import InferStage

    return InferStage(res.runtimes, res.verdict, res.settings.batch_size)


# In order: media stages claim their items first (videos by extension, images the rest).
STAGES: tuple[StageEntry, ...] = (
    StageEntry("video", _video, "videos: T frames sampled, faces followed (faces on), sequences made"),
    StageEntry("images", _images, "images: read, hashed, copies found, decoded (faces on: detected and cropped)"),
    StageEntry("known", _known, "files whose bytes already have a row in this scan (or, reusing, an earlier one)"),
    StageEntry("infer", _infer, "every input through the model in bounded calls; the one verdict"),
)


class Stages:
    """The scan's stages, made from :data:`STAGES`; what the loop runs."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = list(stages)
        for stage in self.stages:
            assert stage.phase in PHASES, f"stage {stage.name!r} has phase {stage.phase!r}"

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
        clock = time.perf_counter
        for stage in self.stages:
            if stage.phase == phase:
                started = clock()
                stage.run(batch, job)
                batch.timings[stage.name] = batch.timings.get(stage.name, 0.0) + clock() - started

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
