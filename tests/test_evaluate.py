"""Evaluation, the HTML report and calibration, on a model trained here and exported to ONNX."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from dfscan import db
from dfscan.detector.data import find_splits
from dfscan.detector.export import export_onnx
from dfscan.trt.model_info import inspect_model
from dfscan.detector.report import FIGURES
from dfscan.detector.synth import synthesize
from dfscan.detector.train import TrainConfig, train
from dfscan.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A synthesised archive, a tiny detector trained on it for a few steps, and its ONNX export."""
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    synthesize(data, 80, size=96, seed=5)
    cfg = TrainConfig(backbone="tiny", lstm_hidden=16, batch_size=8, workers=0, epochs=2, target_accuracy=None,
                      evaluate_test=False)
    result = train(data, root / "train", cfg, log=lambda s: None)
    export_onnx(result.best_checkpoint, root / "model")
    return data, root / "train", root / "model"


def _model_copy(trained, tmp_path):
    """A private copy of the exported model (calibration rewrites its sidecar)."""
    _, _, model_dir = trained
    shutil.copytree(model_dir, tmp_path / "model")
    return tmp_path / "model" / "model.onnx"


def test_report_has_every_figure_and_is_self_contained(trained, tmp_path):
    data, train_dir, model_dir = trained
    result = run("evaluate", str(model_dir / "model.onnx"), str(data), "--out", str(tmp_path / "ev"))
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "report.html" in result.output
    html = (tmp_path / "ev" / "report.html").read_text()
    for fig_id, title in FIGURES:
        match = re.search(rf'<figure id="{fig_id}">(.*?)</figure>', html, re.S)
        assert match, f"figure {fig_id} ({title}) missing"
        body = match.group(1)
        assert "<svg" in body or 'src="data:image/jpeg;base64,' in body, f"{fig_id} has no picture"
    # Training curves come from training_results.json beside the checkpoint the model was exported from.
    curves = re.search(r'<figure id="fig-training-curves">(.*?)</figure>', html, re.S).group(1)
    assert curves.count("<svg") == 2 and "No training history" not in curves
    # Self-contained: no scripts, stylesheets or images fetched from anywhere.
    assert not re.search(r"(src|href)=\"(?!data:|#)", html)
    assert "http://" not in html and "https://" not in html and "<script" not in html
    # The archive came from `dfscan synth`: the report says so, and metrics.json records it.
    assert "Synthetic data." in html
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["data"]["synthetic"] is True


def test_metrics_json_holds_every_number(trained, tmp_path):
    data, _, model_dir = trained
    run("evaluate", str(model_dir / "model.onnx"), str(data), "--out", str(tmp_path / "ev"))
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    n_test = len(find_splits(data).test)
    assert m["n"] == n_test == m["data"]["scored"]
    for key in ("accuracy", "roc_auc", "pr_auc", "average_precision", "youden"):
        assert m[key] is not None, key
    assert set(m["per_class"]) == {"real", "fake"}
    assert set(m["per_class"]["fake"]) == {"precision", "recall", "f1", "support"}
    assert np.sum(m["confusion_matrix"]["matrix"]) == n_test
    assert 0 <= m["calibration"]["ece"] <= 1 and len(m["calibration"]["bins"]["count"]) == 10
    assert sum(m["confidence"]["histogram"]["correct"]) + sum(m["confidence"]["histogram"]["incorrect"]) == n_test
    assert 0 <= m["uncertainty"]["mean_entropy"] <= 1
    errors = m["errors"]["highest_confidence"]
    assert len(errors) == min(12, m["errors"]["count"])
    assert all(a["confidence"] >= b["confidence"] for a, b in zip(errors, errors[1:]))
    assert all(e["true"] != e["predicted"] for e in errors)


def test_evaluation_agrees_with_the_scanner(trained, tmp_path, sqlite_url):
    """What evaluate measures is what a scan stores: same p_fake per image, same accuracy."""
    data, _, model_dir = trained
    model = model_dir / "model.onnx"
    run("evaluate", str(model), str(data), "--out", str(tmp_path / "ev"))
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    scan = run("scan", str(data / "test"), "--model", str(model), "--db", sqlite_url, "--json")
    assert scan.exit_code == 0, scan.output
    engine = db.make_engine(sqlite_url)
    with engine.connect() as conn:
        rows = {r.path: r for r in conn.execute(text("SELECT path, label, p_fake FROM scan_results"))}
    engine.dispose()
    truth = {p: "fake" if "/fake/" in p else "real" for p in rows}
    scan_acc = np.mean([rows[p].label == truth[p] for p in rows])
    assert len(rows) == m["n"]
    assert scan_acc == pytest.approx(m["accuracy"])
    for e in m["samples"]:
        assert rows[e["path"]].p_fake == pytest.approx(e["p_fake"], abs=1e-5)


def test_calibrate_stores_temperature_and_threshold_that_the_scan_applies(trained, tmp_path, sqlite_url):
    data, _, _ = trained
    model = _model_copy(trained, tmp_path)
    result = run("calibrate", str(model), str(data), "--target-fpr", "0.1", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    info = inspect_model(model)
    assert info.temperature == pytest.approx(out["temperature"]) and info.threshold == pytest.approx(out["threshold"])
    assert info.extra["calibration"]["split"] == "valid"
    assert out["fpr"] <= 0.1 and out["after"]["nll"] <= out["before"]["nll"] + 1e-9

    scan = run("scan", str(data / "valid"), "--model", str(model), "--db", sqlite_url, "--json")
    assert scan.exit_code == 0, scan.output
    engine = db.make_engine(sqlite_url)
    with engine.connect() as conn:
        rows = list(conn.execute(text("SELECT path, label, p_fake FROM scan_results")))
        stored_t = conn.execute(text("SELECT threshold FROM scans")).scalar_one()
    engine.dispose()
    assert stored_t == pytest.approx(info.threshold)
    for r in rows:
        assert r.label == ("fake" if r.p_fake >= info.threshold else "real")
    reals = [r for r in rows if "/real/" in r.path]
    assert np.mean([r.label == "fake" for r in reals]) == pytest.approx(out["fpr"])

    # evaluate uses the calibrated operating point too.
    run("evaluate", str(model), str(data), "--split", "valid", "--out", str(tmp_path / "ev"))
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["temperature"] == pytest.approx(info.temperature) and m["threshold"] == pytest.approx(info.threshold)
    assert m["false_positives"] / m["per_class"]["real"]["support"] == pytest.approx(out["fpr"])


def test_calibrate_refuses_a_checkpoint(trained):
    data, train_dir, _ = trained
    result = run("calibrate", str(train_dir / "best.pt"), str(data))
    assert result.exit_code != 0 and "dfscan export" in result.output


def test_evaluate_a_checkpoint_and_without_history(trained, tmp_path):
    data, train_dir, _ = trained
    ckpt = tmp_path / "lonely" / "best.pt"
    ckpt.parent.mkdir()
    shutil.copy(train_dir / "best.pt", ckpt)  # no training_results.json beside it
    result = run("evaluate", str(ckpt), str(data), "--split", "valid", "--out", str(tmp_path / "ev"))
    assert result.exit_code == 0, result.output
    html = (tmp_path / "ev" / "report.html").read_text()
    assert 'id="fig-training-curves"' in html and "No training history" in html
    with_history = run("evaluate", str(ckpt), str(data), "--split", "valid", "--out", str(tmp_path / "ev2"),
                       "--training-results", str(train_dir / "training_results.json"))
    assert with_history.exit_code == 0
    assert "No training history" not in (tmp_path / "ev2" / "report.html").read_text()


def test_undecodable_images_are_listed_not_fatal(trained, tmp_path):
    data, _, model_dir = trained
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    victim = next((copy / "test" / "fake").glob("*.jpg"))
    victim.write_bytes(victim.read_bytes()[:300])
    result = run("evaluate", str(model_dir / "model.onnx"), str(copy), "--out", str(tmp_path / "ev"))
    assert result.exit_code == 0, result.output
    assert "could not be decoded" in result.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert [f["path"] for f in m["data"]["failed"]] == [str(victim)]
    assert m["n"] == m["data"]["images"] - 1
