"""A bare batch through the scan's stages (no database, no loop): the image stage, optionally the video stage,
and the infer stage, as :class:`dfscan.workers.scoring.Stages` runs them in a scan."""

from __future__ import annotations

from dfscan.workers.scoring import Stages, Verdict
from dfscan.workers.scoring.images import ImageStage
from dfscan.workers.scoring.verdict import InferStage


def stages(decoder, runtime=None, verdict: Verdict | None = None, *, video=None, sequence_runtime=None,
           batch_size: int = 64, **image_options) -> Stages:
    runtimes = {"image": runtime}
    if sequence_runtime is not None:
        runtimes["sequence"] = sequence_runtime
    made = [ImageStage(decoder, **image_options), InferStage(runtimes, verdict or Verdict(), batch_size)]
    return Stages(([video] if video is not None else []) + made)


def score_paths(paths, decoder, runtime, verdict: Verdict | None = None, **options) -> list:
    """Every path's row, one batch (``options``: as :func:`stages`)."""
    return stages(decoder, runtime, verdict, **options).run([str(p) for p in paths]).result
