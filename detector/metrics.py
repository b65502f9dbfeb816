"""Classification and calibration metrics in plain numpy.

Conventions follow scikit-learn (which the tests use to check these, and which
dfscan does not need at run time): labels are 0 (real) and 1 (fake), scores
are p(fake), a prediction is fake when ``score >= threshold``, confusion
matrices have true classes in rows and predictions in columns.
"""

from __future__ import annotations

import numpy as np


def _arrays(y_true, y_other) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(y_true), np.asarray(y_other)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"expected two 1-D arrays of the same length, got shapes {a.shape} and {b.shape}")
    return a, b


def accuracy(y_true, y_pred) -> float:
    a, b = _arrays(y_true, y_pred)
    return float(np.mean(a == b)) if a.size else float("nan")


def confusion_matrix(y_true, y_pred, n_classes: int = 2) -> np.ndarray:
    """``cm[i, j]``: how many of class ``i`` were predicted as ``j``."""
    a, b = _arrays(y_true, y_pred)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (a.astype(np.int64), b.astype(np.int64)), 1)
    return cm


def precision_recall_f1(y_true, y_pred, n_classes: int = 2) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support; 0 where a ratio has no denominator (scikit-learn's zero_division=0)."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def _binary_clf_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive counts at each distinct score, highest score first."""
    y, s = _arrays(y_true, scores)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order].astype(np.float64), (y[order] == 1).astype(np.float64)
    distinct = np.where(np.diff(s))[0]
    idx = np.r_[distinct, y.size - 1]
    tps = np.cumsum(y)[idx]
    fps = 1 + idx - tps
    return fps, tps, s[idx]


def roc_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, starting at (0, 0) with threshold +inf."""
    fps, tps, thr = _binary_clf_curve(y_true, scores)
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    thr = np.r_[np.inf, thr]
    if fps[-1] <= 0 or tps[-1] <= 0:
        raise ValueError("ROC needs both classes among the labels")
    return fps / fps[-1], tps / tps[-1], thr


def auc(x, y) -> float:
    """Area under a curve by the trapezoidal rule; ``x`` must be monotonic."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    area = float(np.trapezoid(y, x)) if hasattr(np, "trapezoid") else float(np.trapz(y, x))
    return abs(area)


def roc_auc(y_true, scores) -> float:
    fpr, tpr, _ = roc_curve(y_true, scores)
    return auc(fpr, tpr)


def youden_threshold(y_true, scores) -> dict[str, float]:
    """The threshold that maximises Youden's J = TPR - FPR, with its rates."""
    fpr, tpr, thr = roc_curve(y_true, scores)
    j = tpr - fpr
    best = int(np.argmax(j))
    threshold = float(min(thr[best], 1.0))  # +inf (nothing is fake) only wins when every J is 0
    return {"threshold": threshold, "j": float(j[best]), "tpr": float(tpr[best]), "fpr": float(fpr[best])}


def precision_recall_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) as scikit-learn gives them: thresholds increasing, ending at (1, 0)."""
    fps, tps, thr = _binary_clf_curve(y_true, scores)
    if tps[-1] <= 0:
        raise ValueError("a precision-recall curve needs positive (fake) labels")
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thr[::-1]


def average_precision(y_true, scores) -> float:
    """Sum over thresholds of (R_n - R_(n-1)) * P_n: scikit-learn's average_precision_score."""
    precision, recall, _ = precision_recall_curve(y_true, scores)
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def pr_auc(y_true, scores) -> float:
    """Trapezoidal area under the precision-recall curve (``auc(recall, precision)``), the original's PR AUC."""
    precision, recall, _ = precision_recall_curve(y_true, scores)
    return auc(recall, precision)


def reliability_bins(confidence, correct, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Equal-width bins of top-label confidence over (0, 1]: count, mean confidence and accuracy per bin."""
    conf, ok = _arrays(confidence, correct)
    conf = conf.astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin b holds (edges[b], edges[b+1]]; a confidence of exactly 0 goes to the first bin.
    ids = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(ids, minlength=n_bins).astype(np.int64)
    sum_conf = np.bincount(ids, weights=conf, minlength=n_bins)
    sum_ok = np.bincount(ids, weights=ok.astype(np.float64), minlength=n_bins)
    nz = count > 0
    mean_conf = np.divide(sum_conf, count, out=np.full(n_bins, np.nan), where=nz)
    acc = np.divide(sum_ok, count, out=np.full(n_bins, np.nan), where=nz)
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": acc}


def expected_calibration_error(confidence, correct, n_bins: int = 10) -> float:
    """ECE (Guo et al. 2017): sum over bins of |accuracy - confidence| weighted by the bin's share."""
    bins = reliability_bins(confidence, correct, n_bins)
    n = bins["count"].sum()
    if n == 0:
        return float("nan")
    nz = bins["count"] > 0
    gaps = np.abs(bins["accuracy"][nz] - bins["confidence"][nz])
    return float(np.sum(gaps * bins["count"][nz]) / n)


def calibration_curve(y_true, p_pos, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(fraction of positives, mean p) per non-empty equal-width bin: scikit-learn's calibration_curve."""
    y, p = _arrays(y_true, p_pos)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], p)
    count = np.bincount(ids, minlength=n_bins)
    sum_p = np.bincount(ids, weights=p, minlength=n_bins)
    sum_y = np.bincount(ids, weights=(y == 1).astype(np.float64), minlength=n_bins)
    nz = count > 0
    return sum_y[nz] / count[nz], sum_p[nz] / count[nz]


def entropy(probs, *, normalise: bool = False) -> np.ndarray:
    """Shannon entropy (nats) of each row of ``probs``; ``normalise`` divides by log(classes), giving 0..1."""
    p = np.asarray(probs, dtype=np.float64)
    logs = np.log(p, out=np.zeros_like(p), where=p > 0)
    h = -np.sum(p * logs, axis=1)
    return h / np.log(p.shape[1]) if normalise else h


def log_loss(y_true, probs) -> float:
    """Mean negative log-likelihood of the true class."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-15, 1.0)
    return float(-np.mean(np.log(p[np.arange(y.size), y])))


def brier_score(y_true, p_pos) -> float:
    y, p = _arrays(y_true, p_pos)
    return float(np.mean((p.astype(np.float64) - (y == 1)) ** 2))


def threshold_for_fpr(y_true, scores, target_fpr: float) -> dict[str, float]:
    """The lowest threshold whose false-positive rate (reals called fake) is at most ``target_fpr``.

    Lowest, so that as many fakes as possible are caught at that FPR. Returns the
    threshold with the FPR and TPR it gives on these scores.
    """
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target FPR must be in [0, 1], got {target_fpr}")
    y, s = _arrays(y_true, scores)
    s = s.astype(np.float64)
    neg = np.sort(s[y == 0])[::-1]
    if neg.size == 0 or not np.any(y == 1):
        raise ValueError("choosing a threshold for an FPR needs both classes among the labels")
    allowed = int(np.floor(target_fpr * neg.size + 1e-9))  # reals that may score at or above the threshold
    if allowed >= neg.size:
        threshold = 0.0
    else:
        # Just above the (allowed+1)-th highest real score: it and every lower one stay "real".
        threshold = float(np.nextafter(neg[allowed], np.inf))
    threshold = min(max(threshold, 0.0), 1.0)
    fpr = float(np.mean(s[y == 0] >= threshold))
    tpr = float(np.mean(s[y == 1] >= threshold))
    return {"threshold": threshold, "fpr": fpr, "tpr": tpr, "target_fpr": float(target_fpr)}


def threshold_for_precision(y_true, scores, target_precision: float) -> dict[str, float]:
    """The lowest threshold whose precision (share of real fakes among those called fake) is at least the target.

    Lowest, so that as many fakes as possible are caught at that precision; the
    candidates are the scores themselves (fake when ``score >= threshold``).
    Raises ``ValueError`` when no threshold reaches the target. Returns the
    threshold with the precision, recall and number called fake it gives.
    """
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target precision must be in (0, 1], got {target_precision}")
    fps, tps, thr = _binary_clf_curve(y_true, scores)
    if tps.size == 0 or tps[-1] <= 0:
        raise ValueError("choosing a threshold for a precision needs fake labels among the scores")
    precision = tps / (tps + fps)
    reached = np.flatnonzero(precision >= target_precision - 1e-12)
    if reached.size == 0:
        raise ValueError(f"no threshold reaches precision {target_precision:g} on these scores "
                         f"(the best is {float(precision.max()):.4g})")
    best = int(reached[-1])  # thresholds fall along the curve: the last one reached is the lowest
    return {"threshold": float(thr[best]), "precision": float(precision[best]), "recall": float(tps[best] / tps[-1]),
            "called_fake": int(tps[best] + fps[best]), "target_precision": float(target_precision)}
