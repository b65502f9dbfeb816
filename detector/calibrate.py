"""Calibration: a temperature fitted on the validation split, and a threshold for a target false-positive rate.

Temperature scaling (Guo et al., 2017) divides the logits by one number T
fitted to minimise the validation negative log-likelihood; it leaves the
ranking (and so ROC AUC) unchanged and makes ``p_fake`` honest. The threshold
is then chosen on the calibrated ``p_fake`` of the real validation images so
that at most ``target_fpr`` of them would be called fake. Both go into the
model's ``model_info.json``, which the scanner reads (``dfscan.workers.scoring.Verdict``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from dfscan.detector import metrics
from dfscan.detector.data import find_splits
from dfscan.detector.errors import DetectorError
from dfscan.trt.model_info import ModelFolder, inspect_model, write_model_info
from dfscan.detector.predict import Predictions, open_model, predict
from dfscan.trt.base import softmax

T_RANGE = (0.05, 20.0)
ECE_BINS = 10


class ScoreCalibrationError(DetectorError):
    """Calibration can't be done as asked (no ONNX model, one class only, ...)."""


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    return metrics.log_loss(labels, softmax(logits, temperature))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, bounds: tuple[float, float] = T_RANGE,
                    tol: float = 1e-5) -> float:
    """The T in ``bounds`` minimising the NLL of ``softmax(logits / T)``.

    The NLL is convex in 1/T, so it is unimodal in log T and a golden-section
    search finds the minimum without a gradient or scipy.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0] or logits.shape[0] == 0:
        raise ScoreCalibrationError(f"need (N, C) logits and N labels, got {logits.shape} and {labels.shape}")
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = lo + (1 - ratio) * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    while hi - lo > tol:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - ratio) * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    return float(math.exp((lo + hi) / 2))


def calibration_stats(logits: np.ndarray, labels: np.ndarray, temperature: float, n_bins: int = ECE_BINS) -> dict:
    """NLL, ECE and Brier score of ``softmax(logits / temperature)``."""
    probs = softmax(logits, temperature)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    return {
        "nll": metrics.log_loss(labels, probs),
        "ece": metrics.expected_calibration_error(confidence, correct, n_bins),
        "brier": metrics.brier_score(labels, probs[:, 1]),
    }


@dataclass(frozen=True)
class CalibrationResult:
    model_path: Path
    info_path: Path
    split: str
    n_images: int
    temperature: float
    previous_temperature: float
    threshold: float
    previous_threshold: float
    target_fpr: float | None
    fpr: float
    tpr: float
    before: dict
    after: dict
    failed: int

    def to_dict(self) -> dict:
        data = asdict(self)
        data["model_path"], data["info_path"] = str(self.model_path), str(self.info_path)
        return data


def calibrate_predictions(pred: Predictions, *, target_fpr: float | None, threshold: float) -> dict[str, Any]:
    """Temperature and threshold from validation predictions (no files touched)."""
    labels = pred.labels
    if len(set(labels.tolist())) < 2:
        raise ScoreCalibrationError("calibration needs real and fake images in the validation split")
    temperature = fit_temperature(pred.logits, labels)
    p_fake = softmax(pred.logits, temperature)[:, 1]
    if target_fpr is not None:
        chosen = metrics.threshold_for_fpr(labels, p_fake, target_fpr)
        threshold = chosen["threshold"]
    fpr = float(np.mean(p_fake[labels == 0] >= threshold))
    tpr = float(np.mean(p_fake[labels == 1] >= threshold))
    return {
        "temperature": temperature,
        "threshold": threshold,
        "fpr": fpr,
        "tpr": tpr,
        "before": calibration_stats(pred.logits, labels, 1.0),
        "after": calibration_stats(pred.logits, labels, temperature),
    }


def calibrate(
    model: Path,
    data_dir: Path,
    *,
    target_fpr: float | None = None,
    split: str = "valid",
    batch_size: int = 64,
    progress: bool = False,
) -> CalibrationResult:
    """Fit T (and, with ``target_fpr``, the threshold) on ``split`` and store them in ``model_info.json``.

    Without ``target_fpr`` the model's current threshold is kept.
    """
    if target_fpr is not None and not 0.0 <= target_fpr < 1.0:
        raise ScoreCalibrationError(f"target FPR must be in [0, 1), got {target_fpr}")
    source = open_model(Path(model))
    if source.kind != "onnx":
        raise ScoreCalibrationError(
            f"{model} is a checkpoint; calibration is stored beside an exported model: "
            f"run `dfscan export {model} --out DIR` and calibrate DIR/model.onnx"
        )
    splits = find_splits(Path(data_dir))
    items = splits.get(split)
    if not items:
        raise ScoreCalibrationError(f"{data_dir} has no {split} {splits.media}s to calibrate on")
    # A video set calibrates on its videos' sequence verdicts: the sidecar's temperature serves both graphs.
    pred = predict(source, items, batch_size=batch_size, progress=progress, media=splits.media)
    fitted = calibrate_predictions(pred, target_fpr=target_fpr, threshold=source.threshold)
    record = {
        "fitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": str(Path(data_dir).resolve()),
        "split": split,
        "n_images": len(pred),
        "media": splits.media,
        "target_fpr": target_fpr,
        "fpr": fitted["fpr"],
        "tpr": fitted["tpr"],
        "before": fitted["before"],
        "after": fitted["after"],
    }
    info_path = update_model_info(
        source.path, temperature=fitted["temperature"], threshold=fitted["threshold"], calibration=record
    )
    return CalibrationResult(
        model_path=source.path,
        info_path=info_path,
        split=split,
        n_images=len(pred),
        temperature=fitted["temperature"],
        previous_temperature=source.temperature,
        threshold=fitted["threshold"],
        previous_threshold=source.threshold,
        target_fpr=target_fpr,
        fpr=fitted["fpr"],
        tpr=fitted["tpr"],
        before=fitted["before"],
        after=fitted["after"],
        failed=len(pred.failed),
    )


# Sidecar fields write_model_info takes by name; the rest of the record passes through as extras.
_NAMED = ("architecture", "classes", "input_size", "mean", "std", "threshold", "temperature", "opset")
_REWRITTEN = ("format", "file", "sha256")


def update_model_info(onnx_path: Path, **changes: Any) -> Path:
    """Rewrite ``model_info.json`` beside ``onnx_path`` with ``changes``, keeping every other field."""
    onnx_path = Path(onnx_path)
    folder = ModelFolder(onnx_path)
    record: dict[str, Any] = {}
    if folder.sidecar.is_file():
        inspect_model(onnx_path)  # refuses a sidecar that belongs to another file
        record = folder.read_sidecar() or {}
    record.update(changes)
    named = {k: record.pop(k) for k in _NAMED if k in record}
    for key in ("classes", "input_size", "mean", "std"):
        if key in named:
            named[key] = tuple(named[key])
    if "architecture" not in named:
        named["architecture"] = "unknown"
    for key in _REWRITTEN:
        record.pop(key, None)
    path = write_model_info(onnx_path, **named, **record)
    inspect_model(onnx_path)  # what we wrote must read back
    return path
