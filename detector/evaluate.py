"""Evaluate a model on a labelled split: ``metrics.json`` and one self-contained HTML report.

The model is run as a scan would run it (see :mod:`detector.predict`): an
exported model with its ``model_info.json`` temperature and threshold, on
images decoded by the scanner's Pillow path.

A data set of videos is measured per video: each is one sequence of T sampled
frames (the model's ``frames``, or ``frames=``) and one verdict, so every count
and curve is of videos.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from dfscan.detector import metrics
from dfscan.detector.data import SPLIT_NAMES, find_splits
from dfscan.detector.errors import DetectorError
from dfscan.trt.model_info import CLASSES
from dfscan.detector.predict import Predictions, open_model, predict, training_results_for
from dfscan.trt.base import softmax

METRICS_NAME = "metrics.json"
REPORT_NAME = "report.html"
N_BINS = 10
TOP_ERRORS = 12
HIGH_UNCERTAINTY = 0.8  # normalised entropy above which a prediction counts as uncertain
# The original project's targets, shown on the dashboard.
TARGETS = {"accuracy": 0.93, "roc_auc": 0.95, "pr_auc": 0.90, "mean_confidence": 0.85}


class EvaluationError(DetectorError):
    """The evaluation can't be run as asked."""


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, Any]
    metrics_path: Path
    report_path: Path


def compute_metrics(pred: Predictions, *, temperature: float = 1.0, threshold: float = 0.5,
                    n_bins: int = N_BINS) -> dict[str, Any]:
    """Every number of the report from logits and labels, at the given operating point."""
    y = pred.labels
    if len(y) == 0:
        raise EvaluationError("no image could be scored; nothing to evaluate")
    probs = softmax(pred.logits, temperature)
    p_fake = probs[:, 1]
    y_pred = (p_fake >= threshold).astype(np.int64)
    confidence = np.where(y_pred == 1, p_fake, 1.0 - p_fake)
    correct = y_pred == y
    cm = metrics.confusion_matrix(y, y_pred, len(CLASSES))
    out: dict[str, Any] = {
        "n": int(len(y)),
        "threshold": float(threshold),
        "temperature": float(temperature),
        "accuracy": metrics.accuracy(y, y_pred),
        **_per_class(y, y_pred),
        "confusion_matrix": {"labels": list(CLASSES), "rows": "true", "columns": "predicted", "matrix": cm.tolist()},
        "false_positives": int(cm[0, 1]),
        "false_negatives": int(cm[1, 0]),
    }
    out.update(_ranking(y, p_fake))
    out["calibration"] = _calibration(pred, probs, p_fake, confidence, correct, n_bins)
    # Confidence is >= 0.5 at threshold 0.5; a calibrated threshold below 0.5 lets "fake" verdicts go lower.
    low = min(0.5, float(np.floor(confidence.min() * 10) / 10))
    out["confidence"] = _confidence(confidence, correct, low)
    ent = metrics.entropy(probs, normalise=True)
    out["uncertainty"] = _uncertainty(ent, correct)
    out["errors"] = _errors(pred, p_fake, y_pred, confidence, ent, low)
    out["targets"] = _targets(out)
    out["samples"] = _samples(pred, p_fake, y_pred, confidence, ent)
    return out


def _per_class(y: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Precision, recall, F1 and support per class, and their macro and weighted averages."""
    prf = metrics.precision_recall_f1(y, y_pred, len(CLASSES))
    support = prf["support"]
    per_class = {
        c: {k: float(prf[k][i]) if k != "support" else int(prf[k][i]) for k in ("precision", "recall", "f1", "support")}
        for i, c in enumerate(CLASSES)
    }
    weights = support / max(support.sum(), 1)
    return {
        "per_class": per_class,
        "macro_avg": {k: float(np.mean(prf[k])) for k in ("precision", "recall", "f1")},
        "weighted_avg": {k: float(np.sum(prf[k] * weights)) for k in ("precision", "recall", "f1")},
    }


def _ranking(y: np.ndarray, p_fake: np.ndarray) -> dict[str, Any]:
    """ROC and precision-recall figures; None (and no curves) unless both classes are present."""
    if len(set(y.tolist())) != 2:
        return {"roc_auc": None, "youden": None, "pr_auc": None, "average_precision": None, "curves": {}}
    fpr, tpr, thr = metrics.roc_curve(y, p_fake)
    prec, rec, _ = metrics.precision_recall_curve(y, p_fake)
    return {
        "roc_auc": metrics.auc(fpr, tpr),
        "youden": metrics.youden_threshold(y, p_fake),
        "pr_auc": metrics.auc(rec, prec),
        "average_precision": metrics.average_precision(y, p_fake),
        "curves": {"roc": _thin(fpr, tpr), "pr": _thin(rec, prec)},
    }


def _calibration(pred: Predictions, probs: np.ndarray, p_fake: np.ndarray, confidence: np.ndarray,
                 correct: np.ndarray, n_bins: int) -> dict[str, Any]:
    """Reliability bins, ECE (at this temperature and at 1), Brier score and log loss."""
    y = pred.labels
    bins = metrics.reliability_bins(confidence, correct, n_bins)
    raw = softmax(pred.logits, 1.0)
    return {
        "n_bins": n_bins,
        "ece": metrics.expected_calibration_error(confidence, correct, n_bins),
        "ece_at_temperature_1": metrics.expected_calibration_error(raw.max(1), raw.argmax(1) == y, n_bins),
        "brier": metrics.brier_score(y, p_fake),
        "log_loss": metrics.log_loss(y, probs),
        "bins": {k: [None if not np.isfinite(v) else float(v) for v in np.asarray(bins[k], dtype=float)]
                 for k in ("edges", "count", "confidence", "accuracy")},
    }


def _confidence(confidence: np.ndarray, correct: np.ndarray, low: float) -> dict[str, Any]:
    """Mean confidence, overall and when right or wrong, and its histogram from ``low`` to 1 in 0.05 steps."""
    edges = np.linspace(low, 1.0, int(round((1.0 - low) * 20)) + 1)
    return {
        "mean": float(confidence.mean()),
        "mean_correct": _mean(confidence[correct]),
        "mean_incorrect": _mean(confidence[~correct]),
        "histogram": {
            "edges": [round(float(v), 4) for v in edges],
            "correct": np.histogram(confidence[correct], edges)[0].tolist(),
            "incorrect": np.histogram(confidence[~correct], edges)[0].tolist(),
        },
    }


def _uncertainty(ent: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    """Entropy of the predictions, and accuracy above and below the high-uncertainty line."""
    return {
        "entropy": "normalised Shannon entropy of the (real, fake) probabilities, 0 = certain, 1 = a coin toss",
        "mean_entropy": float(ent.mean()),
        "mean_entropy_correct": _mean(ent[correct]),
        "mean_entropy_incorrect": _mean(ent[~correct]),
        "high_uncertainty_threshold": HIGH_UNCERTAINTY,
        "high_uncertainty_share": float(np.mean(ent > HIGH_UNCERTAINTY)),
        "accuracy_when_certain": _mean(correct[ent <= HIGH_UNCERTAINTY].astype(float)),
        "accuracy_when_uncertain": _mean(correct[ent > HIGH_UNCERTAINTY].astype(float)),
    }


def _errors(pred: Predictions, p_fake: np.ndarray, y_pred: np.ndarray, confidence: np.ndarray, ent: np.ndarray,
            low: float) -> dict[str, Any]:
    """The wrong verdicts: how many, by confidence, and the most confident of them."""
    y = pred.labels
    correct = y_pred == y
    wrong = np.flatnonzero(~correct)
    order = wrong[np.argsort(-confidence[wrong], kind="mergesort")]
    conf_edges = [round(v, 2) for v in np.linspace(low, 1.0, int(round((1.0 - low) * 10)) + 1)]
    return {
        "count": int(len(wrong)),
        "rate": float(len(wrong) / len(y)),
        "by_confidence": {
            "edges": conf_edges,
            "false_positives": np.histogram(confidence[(y == 0) & ~correct], conf_edges)[0].tolist(),
            "false_negatives": np.histogram(confidence[(y == 1) & ~correct], conf_edges)[0].tolist(),
            "total": np.histogram(confidence, conf_edges)[0].tolist(),
        },
        "highest_confidence": [_row(pred, i, p_fake, y_pred, confidence, ent) for i in order[:TOP_ERRORS]],
    }


def _targets(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each of :data:`TARGETS` with its value in ``out`` and whether it passed."""
    targets = {
        name: {"target": goal, "value": out.get(name) if name != "mean_confidence" else out["confidence"]["mean"]}
        for name, goal in TARGETS.items()
    }
    for rec in targets.values():
        rec["passed"] = rec["value"] is not None and rec["value"] >= rec["target"]
    return targets


def _row(pred: Predictions, i: int, p_fake, y_pred, confidence, ent) -> dict[str, Any]:
    return {
        "path": pred.paths[i],
        "true": CLASSES[int(pred.labels[i])],
        "predicted": CLASSES[int(y_pred[i])],
        "p_fake": float(p_fake[i]),
        "confidence": float(confidence[i]),
        "entropy": float(ent[i]),
    }


def _samples(pred: Predictions, p_fake, y_pred, confidence, ent, per_class: int = 6) -> list[dict[str, Any]]:
    """A fixed, reproducible pick of images of each class for the sample-predictions figure."""
    rng = np.random.default_rng(0)
    picked = []
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(pred.labels == c)
        picked += sorted(rng.choice(idx, size=min(per_class, len(idx)), replace=False).tolist())
    return [_row(pred, i, p_fake, y_pred, confidence, ent) for i in picked]


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _thin(x: np.ndarray, y: np.ndarray, limit: int = 400) -> dict[str, list[float]]:
    """A curve cut to at most ``limit`` points (evenly in index, keeping both ends) for the report."""
    if len(x) > limit:
        keep = np.unique(np.r_[np.linspace(0, len(x) - 1, limit).astype(int), len(x) - 1])
        x, y = x[keep], y[keep]
    return {"x": [float(v) for v in x], "y": [float(v) for v in y]}


def evaluate(
    model: Path,
    data_dir: Path,
    out_dir: Path,
    *,
    split: str = "test",
    training_results: Path | None = None,
    threshold: float | None = None,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = False,
    frames: int | None = None,
    reviews: dict[str, Any] | None = None,
) -> EvalResult:
    """Score ``split`` of ``data_dir`` with ``model``; write ``metrics.json`` and ``report.html`` to ``out_dir``.

    A data set of videos is scored per video with ``frames`` sampled frames each (None: the model's own T).
    ``reviews`` (:func:`dfscan.detector.reviews.evaluate_reviews`) adds the figures on analysts' decisions.
    """
    if split not in SPLIT_NAMES:
        raise EvaluationError(f"unknown split {split!r}; known splits: {', '.join(SPLIT_NAMES)}")
    source = open_model(Path(model))
    splits = find_splits(Path(data_dir))
    items = splits.get(split)
    if not items:
        raise EvaluationError(f"{data_dir} has no {split} {splits.media}s")
    if frames is not None and frames < 1:
        raise EvaluationError(f"frames must be at least 1, got {frames}")
    frames = (frames or source.frames) if splits.media == "video" else None
    pred = predict(source, items, batch_size=batch_size, device=device, progress=progress, media=splits.media,
                   frames=frames)
    op_threshold = source.threshold if threshold is None else threshold
    result = compute_metrics(pred, temperature=source.temperature, threshold=op_threshold)
    history_path = Path(training_results) if training_results else training_results_for(source)
    history = None
    if history_path is not None:
        try:
            history = json.loads(history_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise EvaluationError(f"can't read training results {history_path}: {exc}") from None
    record = {
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": source.describe(),
        "data": {"root": str(splits.root), "layout": splits.layout, "split": split, f"{splits.media}s": len(items),
                 "media": splits.media, "scored": len(pred),
                 "failed": [{"path": p, "reason": r} for p, r in pred.failed],
                 **({"frames": frames, "scoring": pred.scoring} if splits.media == "video" else {}),
                 # `dfscan synth` leaves synth.json in its archives: say so wherever these figures go.
                 "synthetic": (Path(splits.root) / "synth.json").is_file()},
        "training_results": str(history_path) if history_path else None,
        **result,
        **({"reviews": reviews} if reviews is not None else {}),
    }
    return _write(Path(out_dir), record, history, source)


def evaluate_reviews_only(out_dir: Path, reviews: dict[str, Any]) -> EvalResult:
    """``metrics.json`` and ``report.html`` holding the figures on analysts' decisions alone."""
    record = {"written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "reviews": reviews}
    return _write(Path(out_dir), record, None, None)


def _write(out_dir: Path, record: dict[str, Any], history: dict[str, Any] | None, source) -> EvalResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / METRICS_NAME
    metrics_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    from dfscan.detector.report import write_report

    report_path = write_report(out_dir / REPORT_NAME, record, history=history, source=source)
    return EvalResult(record, metrics_path, report_path)
