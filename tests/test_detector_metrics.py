"""dfscan.detector.metrics against scikit-learn on known inputs, and calibration that really lowers ECE."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve as sk_calibration_curve

from dfscan.detector import metrics
from dfscan.detector.calibrate import calibrate_predictions, fit_temperature, update_model_info
from dfscan.detector.predict import Predictions
from tests._models import tiny_onnx_model  # noqa: F401 - fixture
from dfscan.trt.base import softmax


def _cases():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 300)
    # Scores that carry signal, with many ties (rounded) to exercise tie handling.
    noisy = np.clip(0.35 * y + rng.normal(0.35, 0.22, y.size), 0, 1)
    yield "ties", y, np.round(noisy, 2)
    yield "continuous", y, np.clip(0.3 * y + rng.uniform(0, 0.7, y.size), 0, 1)
    yield "tiny", np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    yield "perfect", np.array([0, 0, 0, 1, 1]), np.array([0.0, 0.1, 0.2, 0.9, 1.0])


CASES = list(_cases())


@pytest.mark.parametrize("name,y,s", CASES, ids=[c[0] for c in CASES])
def test_ranking_metrics_match_sklearn(name, y, s):
    fpr, tpr, thr = metrics.roc_curve(y, s)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    assert metrics.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)

    p, r, t = metrics.precision_recall_curve(y, s)
    sk_p, sk_r, sk_t = skm.precision_recall_curve(y, s)
    np.testing.assert_allclose(p, sk_p)
    np.testing.assert_allclose(r, sk_r)
    np.testing.assert_allclose(t, sk_t)
    assert metrics.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert metrics.pr_auc(y, s) == pytest.approx(skm.auc(sk_r, sk_p), abs=1e-12)


@pytest.mark.parametrize("name,y,s", CASES, ids=[c[0] for c in CASES])
def test_label_metrics_match_sklearn(name, y, s):
    pred = (s >= 0.5).astype(int)
    assert metrics.accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred))
    np.testing.assert_array_equal(metrics.confusion_matrix(y, pred), skm.confusion_matrix(y, pred, labels=[0, 1]))
    ours = metrics.precision_recall_f1(y, pred)
    sk_p, sk_r, sk_f, sk_s = skm.precision_recall_fscore_support(y, pred, labels=[0, 1], zero_division=0)
    np.testing.assert_allclose(ours["precision"], sk_p)
    np.testing.assert_allclose(ours["recall"], sk_r)
    np.testing.assert_allclose(ours["f1"], sk_f)
    np.testing.assert_array_equal(ours["support"], sk_s)
    probs = np.stack([1 - s, s], axis=1)
    assert metrics.log_loss(y, probs) == pytest.approx(skm.log_loss(y, probs, labels=[0, 1]), rel=1e-9)
    assert metrics.brier_score(y, s) == pytest.approx(skm.brier_score_loss(y, s), rel=1e-12)


def test_precision_with_no_predicted_positives_is_zero_like_sklearn():
    y, pred = np.array([0, 1, 1, 0]), np.zeros(4, dtype=int)
    ours = metrics.precision_recall_f1(y, pred)
    sk_p, sk_r, sk_f, _ = skm.precision_recall_fscore_support(y, pred, labels=[0, 1], zero_division=0)
    np.testing.assert_allclose(ours["precision"], sk_p)
    np.testing.assert_allclose(ours["f1"], sk_f)


@pytest.mark.parametrize("name,y,s", CASES, ids=[c[0] for c in CASES])
def test_calibration_curve_matches_sklearn(name, y, s):
    ours_true, ours_pred = metrics.calibration_curve(y, s, n_bins=5)
    sk_true, sk_pred = sk_calibration_curve(y, s, n_bins=5)
    np.testing.assert_allclose(ours_true, sk_true)
    np.testing.assert_allclose(ours_pred, sk_pred)


def test_ece_by_hand():
    # Two bins used: (0.5, 0.6] with confidences 0.55, 0.6 (one right) and (0.9, 1.0] with 0.95, 1.0 (both right).
    conf = np.array([0.55, 0.6, 0.95, 1.0])
    correct = np.array([True, False, True, True])
    expected = (2 / 4) * abs(0.5 - 0.575) + (2 / 4) * abs(1.0 - 0.975)
    assert metrics.expected_calibration_error(conf, correct, n_bins=10) == pytest.approx(expected)
    bins = metrics.reliability_bins(conf, correct, n_bins=10)
    assert bins["count"].tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 0, 2]


def test_entropy_matches_scipy():
    from scipy.stats import entropy as sp_entropy

    probs = np.array([[0.5, 0.5], [1.0, 0.0], [0.9, 0.1], [0.25, 0.75]])
    np.testing.assert_allclose(metrics.entropy(probs), sp_entropy(probs, axis=1))
    np.testing.assert_allclose(metrics.entropy(probs, normalise=True), sp_entropy(probs, axis=1, base=2))


def test_youden_threshold_maximises_j():
    name, y, s = CASES[1]
    got = metrics.youden_threshold(y, s)
    fpr, tpr, thr = skm.roc_curve(y, s)
    best = np.argmax(tpr - fpr)
    assert got["threshold"] == pytest.approx(thr[best])
    assert got["j"] == pytest.approx(tpr[best] - fpr[best])


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.2, 0.5])
def test_threshold_for_fpr_meets_target_and_is_the_lowest(target):
    name, y, s = CASES[0]  # with ties
    got = metrics.threshold_for_fpr(y, s, target)
    fpr = np.mean(s[y == 0] >= got["threshold"])
    assert fpr <= target + 1e-12
    assert got["fpr"] == pytest.approx(fpr)
    # Any lower threshold that changes a decision on a real image breaks the target.
    lower = [v for v in np.unique(s[y == 0]) if v < got["threshold"]]
    if lower:
        assert np.mean(s[y == 0] >= max(lower)) > target


def _miscalibrated(seed: int, n: int = 2000, scale: float = 12.0):
    """Logits whose calibrated temperature is known: ``scale / 2.8``.

    The margin d is N(1.4, 1) towards the true class, so P(fake | d) = sigmoid(2.8 d)
    exactly, while softmax of (-d/2, d/2) * scale gives sigmoid(scale * d). A model
    right 92 % of the time that claims much more at scale 12 (T = 4.3).
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    margin = rng.normal(1.4, 1.0, n) * np.where(y == 1, 1, -1)
    logits = np.stack([-margin, margin], axis=1) / 2 * scale
    return logits, y


def test_temperature_scaling_lowers_ece_on_an_overconfident_model():
    fit_logits, fit_y = _miscalibrated(1)
    test_logits, test_y = _miscalibrated(2)
    t = fit_temperature(fit_logits, fit_y)
    assert t == pytest.approx(12.0 / 2.8, rel=0.1)

    def ece(temp):
        probs = softmax(test_logits, temp)
        return metrics.expected_calibration_error(probs.max(1), probs.argmax(1) == test_y, 10)

    assert ece(1.0) > 0.05
    assert ece(t) < ece(1.0) / 3
    # Accuracy is untouched: temperature doesn't change the argmax.
    assert np.array_equal(softmax(test_logits, t).argmax(1), softmax(test_logits, 1.0).argmax(1))


def test_temperature_fit_is_the_nll_minimum():
    logits, y = _miscalibrated(3, scale=0.3)  # under-confident: T < 1
    t = fit_temperature(logits, y)
    assert t < 1.0
    nll = lambda temp: metrics.log_loss(y, softmax(logits, temp))  # noqa: E731
    assert nll(t) <= min(nll(t * 0.95), nll(t * 1.05))


def test_calibrate_predictions_picks_threshold_for_target_fpr():
    logits, y = _miscalibrated(4)
    pred = Predictions([f"{i}.jpg" for i in range(len(y))], y, logits)
    out = calibrate_predictions(pred, target_fpr=0.02, threshold=0.5)
    assert out["fpr"] <= 0.02
    assert out["threshold"] > 0.5
    assert out["after"]["ece"] < out["before"]["ece"]


def test_update_model_info_keeps_other_fields_and_the_scanner_reads_it(tmp_path, tiny_onnx_model):
    import json
    import shutil

    from dfscan.trt.model_info import inspect_model
    from dfscan.core.settings import Settings
    from dfscan.workers.scoring.context import ScanContext

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_onnx_model.parent, model_dir, ignore=shutil.ignore_patterns("checkpoint"))
    before = json.loads((model_dir / "model_info.json").read_text())
    update_model_info(model_dir / "model.onnx", temperature=2.5, threshold=0.8, calibration={"n_images": 3})
    after = json.loads((model_dir / "model_info.json").read_text())
    assert after["temperature"] == 2.5 and after["threshold"] == 0.8
    assert after["calibration"] == {"n_images": 3}
    for key in ("architecture", "checkpoint", "created_at", "sha256", "exporter", "classes"):
        assert after[key] == before[key], key
    info = inspect_model(model_dir / "model.onnx")
    assert (info.temperature, info.threshold) == (2.5, 0.8)
    ctx = ScanContext.open(Settings(model=model_dir / "model.onnx", db_url=f"sqlite:///{tmp_path / 'x.db'}"))
    try:
        assert (ctx.verdict.temperature, ctx.verdict.threshold) == (2.5, 0.8)
    finally:
        ctx.close()

