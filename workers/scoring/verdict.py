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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dfscan.trt.base import Runtime, run_batched, softmax
from dfscan.trt.errors import InferenceFailed
from dfscan.trt.model_info import TEMPERATURE_RANGE
from dfscan.workers.reading import ImageError

__all__ = ["AGGREGATIONS", "Decision", "Verdict", "infer"]

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
    out: list[Decision | ImageError] = []
    per_call = max(1, per_call)
    for start in range(0, len(inputs), per_call):
        part = inputs[start : start + per_call]
        try:
            logits = run_batched(runtime, np.stack(part))
            if logits.shape[0] != len(part) or not np.all(np.isfinite(logits)):
                raise InferenceFailed(f"runtime returned {logits.shape} non-finite or misshapen logits")
        except InferenceFailed as exc:
            out.extend([ImageError("inference-failed", f"inference failed: {exc}")] * len(part))
            continue
        out.extend(verdict.decide(logits))
    return out
