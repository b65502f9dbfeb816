"""Scoring: the stage protocol, the table of stages, the one verdict and the one loop.

An item (an image or a video) goes through the stages of :data:`STAGES` in
order (:mod:`~dfscan.workers.scoring.stages`): the media stages claim and
prepare their items (:mod:`.video_stage`, :mod:`.images`, with faces on
:mod:`.face_stage`'s decoder), :mod:`.dedupe` gives files already scored
their row, and :mod:`.verdict`'s infer stage runs the model and decides.
:mod:`.loop` runs the stages over chunks for the embedded scan, the fleet and
the service alike; :mod:`.context` holds what a process scores with.
"""

from dfscan.workers.scoring.context import Resources, ScanContext
from dfscan.workers.scoring.stages import Batch, Input, Item, Payload, TensorPayload
from dfscan.workers.scoring.loop import (
    EMBEDDED,
    FLEET,
    BatchHook,
    ChunkResult,
    Policy,
    prefetch,
    run_chunks,
    run_local_scan,
    score_chunk,
    split,
)
from dfscan.workers.scoring.stages import STAGES, Job, Stage, StageEntry, Stages
from dfscan.workers.scoring.verdict import Decision, Verdict, infer

__all__ = [
    "EMBEDDED", "FLEET", "STAGES", "Batch", "BatchHook", "ChunkResult", "Decision", "Input", "Item", "Job",
    "Payload", "Policy", "Resources", "ScanContext", "Stage", "StageEntry", "Stages", "TensorPayload", "Verdict",
    "infer", "prefetch", "run_chunks", "run_local_scan", "score_chunk", "split",
]
