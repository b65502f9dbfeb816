"""What analysts' decisions say about the detector: its figures with intervals, and a calibration fitted on them.

Analysts decide a scan's items ``fake``, ``real``, ``unsure`` or ``escalate``
(:mod:`dfscan.db.reviews`; the view ``scan_reviews`` holds the current one).
Only items the detector scored (status ``ok``) and decided ``fake`` or
``real`` measure it; the others are counted and reported, never used. Files
with the same bytes (content hash) decided alike count once; decided
differently, they are left out as conflicting.

* :func:`review_figures`: the confusion table (decision x detector label),
  precision of the ``fake`` labels, recall among reviewed items, accuracy and
  false-positive rate, each with a 95% Wilson score interval.
* :func:`fit_reviews`: a temperature (:func:`detector.calibrate.fit_temperature`)
  and a threshold for a target precision (:func:`detector.metrics.threshold_for_precision`)
  on the decisions. A stored ``p_fake`` already went through the scan's
  temperature T (``softmax(logits / T)``), so the logits are recovered as
  ``(0, T * logit(p_fake))`` (softmax ignores a shift, so these give every
  temperature the same probabilities as the model's own logits); the new
  threshold applies to ``p_fake`` at the new temperature, as the scanner
  applies it (:class:`dfscan.workers.scoring.verdict.Verdict`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dfscan.core.constants import DEFAULT_MIN_REVIEW_DECISIONS
from dfscan.detector import metrics
from dfscan.detector.calibrate import ScoreCalibrationError, calibration_stats, fit_temperature, update_model_info
from dfscan.detector.errors import DetectorError
from dfscan.trt.base import softmax

__all__ = [
    "DEFAULT_MIN_DECISIONS", "Reviewed", "ReviewCalibration", "ReviewError", "ReviewModelMismatch", "TooFewDecisions",
    "Z95", "calibrate_from_reviews", "fit_reviews", "load_reviewed", "logits_from_p_fake", "review_figures",
    "reviewed", "wilson_interval",
]

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile: two-sided 95%
DEFAULT_MIN_DECISIONS = DEFAULT_MIN_REVIEW_DECISIONS
# A stored p_fake of exactly 0 or 1 (saturated in float64) has no finite logit: it is taken as this close to it.
P_CLIP = 1e-15
DECIDED = ("real", "fake")  # decisions that say what an item is, in CLASSES order (index = class)


class ReviewError(DetectorError):
    """Analysts' decisions can't be used as asked."""


class TooFewDecisions(ReviewError):
    """Fewer fake/real decisions on scored items than the minimum a fit needs."""


class ReviewModelMismatch(ReviewError):
    """The scans were made with different models, or with another model than the one to calibrate."""


class ItemLike(Protocol):
    """What a current decision carries (:class:`dfscan.db.reviews.ReviewedItem`)."""

    scan_id: int
    path: str
    decision: str
    status: str
    label: str | None
    p_fake: float | None
    content_hash: str | None


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion ``successes / n``; None when ``n`` is 0."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def logits_from_p_fake(p_fake: np.ndarray, temperature: np.ndarray | float) -> np.ndarray:
    """(N, 2) logits whose softmax at ``temperature`` is ``(1 - p_fake, p_fake)``: the inverse of the scan's verdict."""
    p = np.clip(np.asarray(p_fake, dtype=np.float64), P_CLIP, 1.0 - P_CLIP)
    t = np.broadcast_to(np.asarray(temperature, dtype=np.float64), p.shape)
    logits = np.zeros((p.size, 2), dtype=np.float64)
    logits[:, 1] = t * (np.log(p) - np.log1p(-p))
    return logits


@dataclass(frozen=True)
class Reviewed:
    """The decided items that measure the detector, as arrays; ``counts`` says what was left out and why.

    ``truth`` is the decision and ``label`` the detector's stored label (0 real, 1 fake);
    ``temperature`` the temperature the item's scan scored with.
    """

    items: tuple[tuple[int, str], ...]  # (scan_id, path)
    truth: np.ndarray
    label: np.ndarray
    p_fake: np.ndarray
    temperature: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)


def reviewed(decisions: Iterable[ItemLike], temperatures: Mapping[int, float]) -> Reviewed:
    """The items of ``decisions`` that measure the detector, and counts of every decision by what became of it.

    ``counts``: ``fake``, ``real``, ``unsure``, ``escalate`` (every current decision);
    ``not_scored`` (decided, but the row is an error or has no face); ``duplicates``
    (the same bytes decided alike, counted once); ``conflicting`` (the same bytes
    decided fake and real, all left out); ``used``.
    """
    counts = {d: 0 for d in ("fake", "real", "unsure", "escalate")}
    counts.update(not_scored=0, duplicates=0, conflicting=0, used=0)
    by_content: dict[str, list[ItemLike]] = {}
    kept: list[ItemLike] = []
    for item in sorted(decisions, key=lambda i: (i.scan_id, i.path)):
        counts[item.decision] = counts.get(item.decision, 0) + 1
        if item.decision not in DECIDED:
            continue
        if item.status != "ok" or item.label not in DECIDED or item.p_fake is None:
            counts["not_scored"] += 1
            continue
        if item.content_hash:
            group = by_content.setdefault(item.content_hash, [])
            group.append(item)
            if len(group) > 1:
                continue
        kept.append(item)
    for group in by_content.values():
        if len({i.decision for i in group}) > 1:
            counts["conflicting"] += len(group)
            kept.remove(group[0])
        else:
            counts["duplicates"] += len(group) - 1
    counts["used"] = len(kept)
    missing = sorted({i.scan_id for i in kept} - set(temperatures))
    if missing:
        raise ReviewError(f"no temperature known for scan {', '.join(map(str, missing))}")
    return Reviewed(
        items=tuple((i.scan_id, i.path) for i in kept),
        truth=np.array([DECIDED.index(i.decision) for i in kept], dtype=np.int64),
        label=np.array([DECIDED.index(i.label) for i in kept], dtype=np.int64),  # type: ignore[arg-type]
        p_fake=np.array([i.p_fake for i in kept], dtype=np.float64),
        temperature=np.array([temperatures[i.scan_id] for i in kept], dtype=np.float64),
        counts=counts,
    )


def _rate(successes: int, n: int) -> dict[str, Any]:
    interval = wilson_interval(successes, n)
    return {"value": successes / n if n else None, "successes": successes, "n": n,
            "interval": None if interval is None else list(interval)}


def review_figures(rv: Reviewed) -> dict[str, Any]:
    """The detector measured on the decisions: confusion table, precision, recall, accuracy, FPR, 95% intervals."""
    cm = metrics.confusion_matrix(rv.truth, rv.label, len(DECIDED)) if len(rv) else np.zeros((2, 2), np.int64)
    tn, fp, fn, tp = (int(v) for v in cm.ravel())
    return {
        "n_decisions": len(rv),
        "decisions": dict(rv.counts),
        "confusion_matrix": {"labels": list(DECIDED), "rows": "decision", "columns": "detector",
                             "matrix": cm.tolist()},
        "true_positives": tp, "false_positives": fp, "false_negatives": fn, "true_negatives": tn,
        # Of the items the detector called fake, the share analysts decided fake.
        "precision": _rate(tp, tp + fp),
        # Of the items analysts decided fake, the share the detector called fake (among reviewed items only).
        "recall": _rate(tp, tp + fn),
        "accuracy": _rate(tp + tn, len(rv)),
        "false_positive_rate": _rate(fp, fp + tn),
        "confidence_level": 0.95,
        "interval": "Wilson score",
    }


def fit_reviews(rv: Reviewed, *, target_precision: float | None, threshold: float,
                min_decisions: int = DEFAULT_MIN_DECISIONS) -> dict[str, Any]:
    """Temperature and threshold fitted on the decisions (no files touched).

    Without ``target_precision`` the given ``threshold`` is kept. Refuses below
    ``min_decisions`` usable decisions, or without both classes among them.
    """
    if target_precision is not None and not 0.0 < target_precision <= 1.0:
        raise ReviewError(f"target precision must be in (0, 1], got {target_precision}")
    n, c = len(rv), rv.counts
    if n < max(min_decisions, 1):
        left = ", ".join(f"{c.get(k, 0)} {k.replace('_', ' ')}" for k in ("unsure", "escalate", "not_scored",
                                                                           "duplicates", "conflicting"))
        raise TooFewDecisions(
            f"calibration from reviews needs at least {min_decisions} fake/real decisions on scored items; "
            f"there are {n} ({int(np.sum(rv.truth == 1))} fake, {int(np.sum(rv.truth == 0))} real; not used: {left})"
        )
    if len(set(rv.truth.tolist())) < 2:
        raise TooFewDecisions(f"calibration from reviews needs items decided fake and items decided real; "
                              f"all {n} are {DECIDED[int(rv.truth[0])]}")
    logits = logits_from_p_fake(rv.p_fake, rv.temperature)
    try:
        temperature = fit_temperature(logits, rv.truth)
    except ScoreCalibrationError as exc:
        raise ReviewError(str(exc)) from None
    p_fake = softmax(logits, temperature)[:, 1]
    chosen = None
    if target_precision is not None:
        try:
            chosen = metrics.threshold_for_precision(rv.truth, p_fake, target_precision)
        except ValueError as exc:
            raise ReviewError(f"{exc}; lower --target-precision or decide more items") from None
        threshold = chosen["threshold"]
    called = p_fake >= threshold
    tp = int(np.sum(called & (rv.truth == 1)))
    fp = int(np.sum(called & (rv.truth == 0)))
    return {
        "temperature": temperature,
        "threshold": float(threshold),
        "n_decisions": n,
        "fake": int(np.sum(rv.truth == 1)),
        "real": int(np.sum(rv.truth == 0)),
        "precision": _rate(tp, tp + fp),
        "recall": _rate(tp, int(np.sum(rv.truth == 1))),
        "before": _stats_at_scan_temperature(rv),
        "after": calibration_stats(logits, rv.truth, temperature),
    }


def _stats_at_scan_temperature(rv: Reviewed) -> dict[str, float]:
    """NLL, ECE and Brier score of the stored p_fake, as the scans gave them (each at its scan's temperature)."""
    p = np.clip(rv.p_fake, P_CLIP, 1.0 - P_CLIP)
    probs = np.stack([1.0 - p, p], axis=1)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == rv.truth
    return {"nll": metrics.log_loss(rv.truth, probs),
            "ece": metrics.expected_calibration_error(confidence, correct),
            "brier": metrics.brier_score(rv.truth, p)}


# ---------------------------------------------------------------------- from the database


def load_reviewed(session, scan_ids: Sequence[int]) -> tuple[Reviewed, dict[str, Any]]:
    """The decided items of ``scan_ids`` and what the scans were made with (one model, each scan's temperature)."""
    from dfscan import db

    scan_ids = sorted(set(int(s) for s in scan_ids))
    if not scan_ids:
        raise ReviewError("name at least one scan whose decisions to use")
    audits = {sid: db.scan_audit(session, sid) for sid in scan_ids}  # ScanNotFound for an unknown id
    models = {a.get("model_sha256") for a in audits.values()}
    if len(models) > 1:
        raise ReviewModelMismatch(
            "the scans were made with different models (" + "; ".join(
                f"scan {sid}: {str(a.get('model_sha256'))[:12]}" for sid, a in audits.items())
            + "); use the scans of one model"
        )
    temperatures = {sid: float(a.get("temperature", 1.0)) for sid, a in audits.items()}
    rv = reviewed(db.current_decisions(session, scan_ids), temperatures)
    source = {
        "scans": scan_ids,
        "model_sha256": next(iter(models)),
        "model_path": next(iter(audits.values())).get("model_path"),
        "temperatures": {str(k): v for k, v in temperatures.items()},
        "thresholds": {str(sid): a.get("threshold") for sid, a in audits.items()},
    }
    return rv, source


def evaluate_reviews(session, scan_ids: Sequence[int]) -> dict[str, Any]:
    """The report's "Reviewed by analysts" record: where the decisions come from and the figures on them."""
    rv, source = load_reviewed(session, scan_ids)
    return {**source, **review_figures(rv)}


@dataclass(frozen=True)
class ReviewCalibration:
    model_path: Path
    info_path: Path
    scans: list[int]
    n_decisions: int
    temperature: float
    previous_temperature: float
    threshold: float
    previous_threshold: float
    target_precision: float | None
    precision: dict
    recall: dict
    before: dict
    after: dict
    decisions: dict

    def to_dict(self) -> dict:
        data = asdict(self)
        data["model_path"], data["info_path"] = str(self.model_path), str(self.info_path)
        return data


def calibrate_from_reviews(model: Path, session, scan_ids: Sequence[int], *, target_precision: float | None,
                           min_decisions: int = DEFAULT_MIN_DECISIONS) -> ReviewCalibration:
    """Fit T (and, with ``target_precision``, the threshold) on the decisions; store them in ``model_info.json``.

    The scans must have been made with ``model`` (the same ONNX bytes).
    """
    from dfscan.detector.predict import open_model

    source = open_model(Path(model))
    if source.kind != "onnx":
        raise ReviewError(f"{model} is a checkpoint; calibration is stored beside an exported model: "
                          f"run `dfscan export {model} --out DIR` and calibrate DIR/model.onnx")
    rv, origin = load_reviewed(session, scan_ids)
    sha = source.sha256
    if origin["model_sha256"] != sha:
        raise ReviewModelMismatch(
            f"the scans were made with model {str(origin['model_sha256'])[:12]} ({origin['model_path']}), "
            f"not {source.path} ({str(sha)[:12]}); calibrate the model that made them"
        )
    fitted = fit_reviews(rv, target_precision=target_precision, threshold=source.threshold,
                         min_decisions=min_decisions)
    record = {
        "fitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "from_reviews": origin["scans"],
        "n_decisions": fitted["n_decisions"],
        "decisions": rv.counts,
        "scan_temperatures": origin["temperatures"],
        "target_precision": target_precision,
        "precision": fitted["precision"],
        "recall": fitted["recall"],
        "before": fitted["before"],
        "after": fitted["after"],
    }
    info_path = update_model_info(source.path, temperature=fitted["temperature"], threshold=fitted["threshold"],
                                  calibration=record)
    return ReviewCalibration(
        model_path=source.path, info_path=info_path, scans=origin["scans"], n_decisions=fitted["n_decisions"],
        temperature=fitted["temperature"], previous_temperature=source.temperature, threshold=fitted["threshold"],
        previous_threshold=source.threshold, target_precision=target_precision, precision=fitted["precision"],
        recall=fitted["recall"], before=fitted["before"], after=fitted["after"], decisions=rv.counts,
    )
