"""The one verdict: logits to probabilities and labels, with the one threshold rule and the one sanity check.

Images, faces, video tracks, verdicts reused from earlier scans and the
service's ``/v1/score`` all decide through :class:`Verdict`:

* :func:`infer` runs model inputs through a runtime in calls of a bounded size
  and turns each call's logits into a :class:`Decision` per input with
  :meth:`Verdict.decide`; a call that fails, or whose logits are misshapen or
  not finite, is an ``inference-failed`` error for each of its inputs;
* :meth:`Verdict.decide` is softmax at the calibration temperature, then
  :meth:`Verdict.decision`: a p_fake that is not a probability is a
  ``bad-probability`` error (a NaN compares false with any threshold:
  unchecked, it would be stored as a confident ``real``);
* :meth:`Verdict.decision` is the threshold rule, also used for an image's
  verdict from its faces' p_fake and a video's from its tracks'
  (:meth:`Verdict.aggregate`) and for relabelling an earlier scan's row.

:class:`InferStage`, the last stage of the table, runs every input of every
item of a batch: inputs of one graph and shape share calls (images and face
crops ``batch_size`` at a time, sequences of T frames ``batch_size // T`` at
a time, so memory is bounded by frames whatever T is); an item any of whose
inputs failed gets that input's error, the others their payload's row.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dfscan.trt.base import Runtime, run_batched, softmax
from dfscan.trt.errors import InferenceFailed
from dfscan.trt.model_info import TEMPERATURE_RANGE
from dfscan.workers.reading import ImageError

if TYPE_CHECKING:
    from dfscan.workers.scoring.stages import Batch, Input, Job

__all__ = ["AGGREGATIONS", "Decision", "InferStage", "Verdict", "infer"]


# How an item with several inputs (faces, tracks) takes one verdict from theirs.
AGGREGATIONS = ("max", "mean")


@dataclass(frozen=True)
class Decision:
    """One input's verdict: ``label`` is ``fake`` or ``real``; ``confidence`` is the probability of that label."""

    label: str
    p_fake: float
    confidence: float


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

    def decision(self, p_fake: float) -> Decision | ImageError:
        """The threshold rule: ``fake`` from the threshold up; an error where ``p_fake`` is not a probability."""
        p = float(p_fake)
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
            return ImageError("bad-probability", f"the model gave p_fake = {p!r}, not a probability")
        label = "fake" if p >= self.threshold else "real"
        return Decision(label, p, p if label == "fake" else 1.0 - p)

    def decide(self, logits: np.ndarray) -> list[Decision | ImageError]:
        """A decision per row of ``logits`` (softmax at the temperature, then :meth:`decision`)."""
        with np.errstate(all="ignore"):
            probs = softmax(logits, self.temperature)
        fake = self.classes.index("fake")
        return [self.decision(p) for p in probs[:, fake]]

    def aggregate(self, p_fakes: Sequence[float], how: str = "max") -> Decision | ImageError:
        """One decision from several inputs' p_fake: the most suspicious (``max``) or their ``mean``."""
        p = float(max(p_fakes)) if how == "max" else float(np.mean(p_fakes))
        return self.decision(p)


def infer(runtime: Runtime, inputs: Sequence[np.ndarray], verdict: Verdict,
          per_call: int) -> list[Decision | ImageError]:
    """A decision per input, ``per_call`` inputs (of one shape) per runtime call.

    A call that raises :class:`InferenceFailed`, or returns misshapen or
    non-finite logits, is an ``inference-failed`` error for each input of
    that call; the other calls go on.
    """
    from dfscan.workers.scoring.tensors import stack_inputs  # inputs may be device tensors (--batches device)

    out: list[Decision | ImageError] = []
    per_call = max(1, per_call)
    for start in range(0, len(inputs), per_call):
        part = inputs[start : start + per_call]
        try:
            logits = run_batched(runtime, stack_inputs(runtime, part))
            if logits.shape[0] != len(part) or not np.all(np.isfinite(logits)):
                raise InferenceFailed(f"runtime returned {logits.shape} non-finite or misshapen logits")
        except InferenceFailed as exc:
            out.extend([ImageError("inference-failed", f"inference failed: {exc}")] * len(part))
            continue
        out.extend(verdict.decide(logits))
    return out


class InferStage:
    name = "infer"
    phase = "score"

    def __init__(self, runtimes: dict[str, Runtime], verdict: Verdict, batch_size: int = 64) -> None:
        self.runtimes = runtimes  # by graph: "image", and "sequence" with a video graph (shared: a wrapper shows)
        self.verdict = verdict  # when no job says otherwise
        self.batch_size = batch_size

    def cost(self, path: str) -> int | None:
        return None

    def run(self, batch: Batch, job: "Job | None" = None) -> None:
        verdict = job.verdict if job is not None else self.verdict
        batch.result = batch.rows(verdict, self.decide(batch, verdict))

    def decide(self, batch: Batch, verdict: Verdict) -> dict[int, "list[Decision | ImageError]"]:
        """Per item to score (by ``id``): one decision per input of its payload, in the payload's order."""
        owners: dict[tuple[str, tuple[int, ...]], list[tuple[int, int, Input]]] = {}
        decided: dict[int, list] = {}
        for item in batch.to_score():
            inputs = item.payload.inputs()  # type: ignore[union-attr]
            decided[id(item)] = [None] * len(inputs)
            for k, inp in enumerate(inputs):
                owners.setdefault((inp.graph, inp.array.shape), []).append((id(item), k, inp))
        for (graph, shape), group in sorted(owners.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            per_call = self.batch_size // shape[0] if graph == "sequence" else self.batch_size
            started = time.perf_counter()
            decisions = infer(self.runtimes[graph], [inp.array for _, _, inp in group], verdict, per_call)
            # The runtime's own seconds (absent where the batch had nothing to infer: the metrics' inference time).
            batch.timings["runtime"] = batch.timings.get("runtime", 0.0) + time.perf_counter() - started
            for (owner, k, _), d in zip(group, decisions):
                decided[owner][k] = d
        return decided

    def record(self) -> dict | None:
        return None

    def close(self) -> None:
        pass  # the runtimes are the context's
