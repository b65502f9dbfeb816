"""What analysts' decisions feed (#26): evaluate and calibrate --from-reviews, export-reviews into `dfscan train`.

Real parts: image files scanned by `dfscan scan` with a real ONNX model (the
linear probe, whose p_fake spreads across images, stored at temperature 2),
decisions recorded through ``db.record_decision`` on SQLite and PostgreSQL,
the real CLI, and `dfscan train` on what export-reviews wrote. Expected
figures come from the decisions the test made; Wilson bounds are checked
against scipy's own implementation and published values.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from dfscan import db
from dfscan.cli import main
from dfscan.detector import metrics
from dfscan.detector.calibrate import fit_temperature, update_model_info
from dfscan.detector.reviews import Reviewed, TooFewDecisions, fit_reviews, logits_from_p_fake, wilson_interval
from dfscan.trt.base import softmax
from dfscan.workers.scoring.verdict import Verdict
from tests._images import write_jpegs
from tests._models import export_linear_probe_model, tiny_onnx_model, tiny_video_model  # noqa: F401 - fixture
from tests.conftest import throwaway_pg_database

SCAN_T = 2.0  # the temperature the scans score with: stored p_fake already went through it
SCAN_THRESHOLD = 0.75  # splits the probe's p_fake on these images into fakes and reals of similar numbers


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def wilson_reference(k: int, n: int) -> tuple[float, float]:
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return ci.low, ci.high


# -- statistics on arrays ------------------------------------------------------------------------


def test_wilson_interval_matches_published_values_and_scipy() -> None:
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (score interval without correction).
    for (k, n), (lo, hi) in {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605), (0, 20): (0.0, 0.1611),
                             (1, 29): (0.0061, 0.1718)}.items():
        got = wilson_interval(k, n)
        assert got is not None and got == pytest.approx((lo, hi), abs=1e-4), (k, n)
    for k, n in ((0, 1), (3, 7), (8, 10), (10, 10), (499, 1000)):
        assert wilson_interval(k, n) == pytest.approx(wilson_reference(k, n), abs=1e-9)
    assert wilson_interval(0, 0) is None


def test_stored_p_fake_inverts_to_logits_that_fit_the_same_temperature() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 400)
    logits = rng.normal(0.0, 1.0, (400, 2)) + np.stack([1 - labels, labels], axis=1) * rng.normal(2.5, 1.0, (400, 1))
    scan_t = 1.7
    stored = np.array([d.p_fake for d in Verdict(temperature=scan_t).decide(logits)])
    recovered = logits_from_p_fake(stored, scan_t)
    for t in (0.5, 1.0, 1.7, 3.0):
        np.testing.assert_allclose(softmax(recovered, t)[:, 1], softmax(logits, t)[:, 1], rtol=1e-9, atol=1e-12)
    true_t = fit_temperature(logits, labels)
    assert fit_temperature(recovered, labels) == pytest.approx(true_t, rel=1e-4)
    # Taking the stored p_fake as if it were at T = 1 would fit a temperature off by the scan's T.
    assert fit_temperature(logits_from_p_fake(stored, 1.0), labels) == pytest.approx(true_t / scan_t, rel=1e-3)


def test_threshold_for_precision_is_the_lowest_that_reaches_it() -> None:
    y = np.array([1, 1, 0, 1, 1, 0, 0, 1, 0, 0])
    s = np.array([0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    # Precision down the list: 1, 1, 2/3, 3/4, 4/5, 4/6, 4/7, 5/8, ...
    assert metrics.threshold_for_precision(y, s, 0.8)["threshold"] == 0.7
    assert metrics.threshold_for_precision(y, s, 0.75)["threshold"] == 0.7
    got = metrics.threshold_for_precision(y, s, 0.6)
    assert got["threshold"] == 0.4 and got["precision"] == pytest.approx(5 / 8) and got["recall"] == 1.0
    assert metrics.threshold_for_precision(y, s, 1.0)["threshold"] == 0.9
    with pytest.raises(ValueError, match="no threshold reaches"):
        metrics.threshold_for_precision(np.array([0, 1]), np.array([0.9, 0.1]), 0.9)


def test_fit_refuses_below_the_minimum_naming_the_count() -> None:
    rv = Reviewed(items=((1, "a"), (1, "b"), (1, "c")), truth=np.array([1, 0, 1]), label=np.array([1, 1, 0]),
                  p_fake=np.array([0.9, 0.6, 0.3]), temperature=np.array([1.0, 1.0, 1.0]),
                  counts={"unsure": 4, "escalate": 1, "not_scored": 0, "duplicates": 0, "conflicting": 0})
    with pytest.raises(TooFewDecisions, match=r"at least 50 .*there are 3 \(2 fake, 1 real; not used: 4 unsure, 1 "):
        fit_reviews(rv, target_precision=0.9, threshold=0.5)


# -- a scan, and decisions on it -----------------------------------------------------------------


@dataclass
class Decided:
    url: str
    scan_id: int
    model: Path
    root: Path
    rows: dict[str, object]  # path -> scan_results row
    truth: dict[str, str]  # the current decision per path that counts (fake/real on an ok row, duplicates out)
    tp: int
    fp: int
    fn: int
    tn: int
    decided: int  # rows in scan_reviews
    pair: str  # the decision on img_00000.jpg and its copy dup.jpg


def _scan_and_decide(base: Path, url: str) -> Decided:
    model = export_linear_probe_model(base / "model")
    update_model_info(model, temperature=SCAN_T, threshold=SCAN_THRESHOLD)
    root = base / "in"
    write_jpegs(root, 40, size=(96, 96))
    shutil.copy(root / "img_00000.jpg", root / "dup.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG at all")
    out = cli("scan", root, "--model", model, "--db", url, "--decoder", "pillow", "--no-provenance", "--json")
    assert out.exit_code == 0, out.output
    scan_id = json.loads(out.output[out.output.index("{"):])["scan_id"]
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            rows = {r.path: r for r in conn.execute(
                text("SELECT * FROM scan_results WHERE scan_id = :s ORDER BY p_fake DESC, path"), {"s": scan_id})}
        by_name = {Path(p).name: p for p in rows}
        pair = (by_name["img_00000.jpg"], by_name["dup.jpg"])
        ok = [p for p, r in rows.items() if r.status == "ok" and p not in pair]
        fakes = [p for p in ok if rows[p].label == "fake"]
        reals = [p for p in ok if rows[p].label == "real"]
        assert len(fakes) >= 12 and len(reals) >= 12, (len(fakes), len(reals))
        plan = {p: "fake" for p in fakes[:8]} | {p: "real" for p in fakes[8:10]}  # 8 TP, 2 FP
        plan |= {p: "fake" for p in reals[:3]} | {p: "real" for p in reals[3:10]}  # 3 FN, 7 TN
        others = {fakes[10]: "unsure", reals[10]: "unsure", fakes[11]: "escalate", by_name["broken.jpg"]: "fake"}
        sessions = db.session_factory(engine)
        with sessions.begin() as s:
            db.record_decision(s, scan_id, fakes[0], "real", "ann")  # changed below: the current one counts
            for path, decision in (plan | others).items():
                db.record_decision(s, scan_id, path, decision, "ann" if len(path) % 2 else "bob")
            # The copy (same bytes) is decided with it: counted once.
            pair_decision = rows[pair[0]].label
            assert db.record_decision(s, scan_id, pair[0], pair_decision, "ann", copies=True) == list(pair)
    finally:
        engine.dispose()
    tp, fp, fn, tn = 8, 2, 3, 7
    if pair_decision == "fake":
        tp += 1
    else:
        tn += 1
    truth = plan | {pair[0]: pair_decision}
    return Decided(url, scan_id, model, root, rows, truth, tp, fp, fn, tn, decided=len(plan) + len(others) + 2,
                   pair=pair_decision)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def decided(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"reviewed-{request.param}")
    if request.param == "sqlite":
        yield _scan_and_decide(base, f"sqlite:///{base / 'dfscan.db'}")
        return
    with throwaway_pg_database() as url:
        yield _scan_and_decide(base, url)


def test_evaluate_from_reviews_gives_the_hand_computed_figures(decided: Decided, tmp_path: Path) -> None:
    out = cli("evaluate", "--from-reviews", decided.scan_id, "--db", decided.url, "--out", tmp_path / "ev")
    assert out.exit_code == 0, out.output
    r = json.loads((tmp_path / "ev" / "metrics.json").read_text())["reviews"]
    tp, fp, fn, tn = decided.tp, decided.fp, decided.fn, decided.tn
    n = tp + fp + fn + tn
    assert r["n_decisions"] == n == 21
    assert r["confusion_matrix"]["matrix"] == [[tn, fp], [fn, tp]]
    pair = 2 if decided.pair == "fake" else 0  # the original and its copy
    assert r["decisions"] == {"fake": 8 + 3 + 1 + pair, "real": 2 + 7 + 2 - pair, "unsure": 2, "escalate": 1,
                              "not_scored": 1, "duplicates": 1, "conflicting": 0, "used": n}
    for name, (k, m) in {"precision": (tp, tp + fp), "recall": (tp, tp + fn), "accuracy": (tp + tn, n),
                         "false_positive_rate": (fp, fp + tn)}.items():
        assert r[name]["value"] == pytest.approx(k / m) and (r[name]["successes"], r[name]["n"]) == (k, m), name
        assert r[name]["interval"] == pytest.approx(wilson_reference(k, m), abs=1e-9), name
    assert r["scans"] == [decided.scan_id] and r["temperatures"] == {str(decided.scan_id): SCAN_T}
    html = (tmp_path / "ev" / "report.html").read_text(encoding="utf-8")
    assert 'id="fig-reviews"' in html and "Reviewed by analysts" in html and f"On {n} decisions" in html
    assert 'id="fig-dashboard"' not in html  # decisions alone: that section only
    assert f"{n} decisions used" in out.output and f"precision of 'fake' {tp / (tp + fp):.2%}" in out.output


def _true_logits(decided: Decided, paths: list[str]) -> np.ndarray:
    """The model's own logits for ``paths``, run outside the product's scan (decoded as the scanner decodes)."""
    import onnxruntime as ort

    from dfscan.workers.images.decode import Preprocess, decode_one

    session = ort.InferenceSession(str(decided.model), providers=["CPUExecutionProvider"])
    batch = np.stack([decode_one(Path(p).read_bytes(), Preprocess()) for p in paths])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def test_calibrate_from_reviews_fits_the_temperature_and_reaches_the_target_precision(decided: Decided) -> None:
    refused = cli("calibrate", "--from-reviews", decided.scan_id, "--model", decided.model, "--db", decided.url)
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "needs at least 50 fake/real decisions on scored items; there are 21" in refused.output

    target = 0.9
    out = cli("calibrate", "--from-reviews", decided.scan_id, "--model", decided.model, "--db", decided.url,
              "--target-precision", target, "--min-decisions", 20, "--json")
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    info = json.loads((decided.model.parent / "probe.model_info.json").read_text())
    assert (info["temperature"], info["threshold"]) == (result["temperature"], result["threshold"])
    assert info["calibration"]["from_reviews"] == [decided.scan_id] and info["calibration"]["n_decisions"] == 21
    assert result["previous_temperature"] == SCAN_T and result["previous_threshold"] == SCAN_THRESHOLD

    # The temperature is fit_temperature's on the model's own logits of the decided files, not the stored p_fake's.
    paths = sorted(decided.truth)
    truth = np.array([1 if decided.truth[p] == "fake" else 0 for p in paths])
    logits = _true_logits(decided, paths)
    assert result["temperature"] == pytest.approx(fit_temperature(logits, truth), rel=1e-3)
    # The scanner's rule at the new temperature and threshold reaches the target precision on the decisions ...
    verdict = Verdict(threshold=result["threshold"], temperature=result["temperature"])
    called = np.array([d.label == "fake" for d in verdict.decide(logits)])
    precision = truth[called].mean()
    assert precision >= target and result["precision"]["value"] == pytest.approx(precision)
    # ... and it is the lowest threshold that does: each lower candidate falls short.
    p_new = softmax(logits, result["temperature"])[:, 1]
    for lower in sorted(set(p_new[p_new < result["threshold"] - 1e-9].tolist())):
        assert truth[p_new >= lower].mean() < target

    other = export_linear_probe_model(decided.model.parent.parent / "other", seed=99)
    mismatch = cli("calibrate", "--from-reviews", decided.scan_id, "--model", other, "--db", decided.url,
                   "--min-decisions", 20)
    assert mismatch.exit_code == 1 and "calibrate the model that made them" in mismatch.output


def test_export_reviews_writes_the_training_layout(decided: Decided, tmp_path: Path) -> None:
    out_dir = tmp_path / "export"
    out = cli("export-reviews", decided.scan_id, "--out", out_dir, "--db", decided.url, "--json")
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    want = {c: sorted(Path(p).read_bytes() for p, d in decided.truth.items() if d == c) for c in ("real", "fake")}
    for c in ("real", "fake"):
        got = sorted(f.read_bytes() for f in (out_dir / c).iterdir())
        assert got == want[c], c  # the decided files' bytes, unchanged
        assert summary["exported"][c] == len(want[c])
    assert summary["skipped"] == {"unsure": 2, "escalate": 1, "not-scored": 1, "duplicate": 1}
    with open(out_dir / "manifest.csv", newline="", encoding="utf-8") as fh:
        manifest = list(csv.DictReader(fh))
    assert len(manifest) == decided.decided  # one row per decided item
    assert sum(r["outcome"] == "exported" for r in manifest) == len(decided.truth)
    again = cli("export-reviews", decided.scan_id, "--out", out_dir, "--db", decided.url)
    assert again.exit_code == 1 and "not an empty folder" in again.output and "Traceback" not in again.output
    if "sqlite" not in decided.url:
        return
    run = cli("train", out_dir, "--out", tmp_path / "run", "--backbone", "tiny", "--lstm-hidden", 16, "--epochs", 1,
              "--batch-size", 8, "--workers", 0, "--target-accuracy", 0, "--max-steps", 2, "--no-progress")
    assert run.exit_code == 0, run.output
    info = json.loads((tmp_path / "run" / "dataset_info.json").read_text())
    assert info["layout"] == "flat" and info["total"] == len(decided.truth)


@pytest.mark.parametrize("decided", ["sqlite"], indirect=True)  # the data set's half needs no database
def test_evaluate_with_a_data_set_puts_the_reviews_beside_its_figures(decided: Decided, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for k, c in enumerate(("real", "fake")):
        write_jpegs(data / c, 7, size=(64, 64), start=100 + 10 * k)
    out = cli("evaluate", decided.model, data, "--out", tmp_path / "ev", "--from-reviews", str(decided.scan_id),
              "--db", decided.url, "--no-progress")
    assert out.exit_code == 0, out.output
    record = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert record["n"] == 2 and record["reviews"]["n_decisions"] == 21
    html = (tmp_path / "ev" / "report.html").read_text(encoding="utf-8")
    assert html.index('id="fig-dashboard"') < html.index('id="fig-reviews"') < html.index('id="fig-confusion-matrix"')
    missing = cli("evaluate", decided.model, "--out", tmp_path / "ev2", "--from-reviews", decided.scan_id)
    assert missing.exit_code == 2 and "Missing argument 'DATA_DIR'" in missing.output


def _decide(url: str, scan_id: int, decisions: dict[str, str]) -> None:
    engine = db.make_engine(url)
    try:
        with db.session_factory(engine).begin() as s:
            for path, decision in decisions.items():
                db.record_decision(s, scan_id, path, decision, "ann")
    finally:
        engine.dispose()


def _paths(url: str, scan_id: int) -> dict[str, str]:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            return {Path(p).name: p for (p,) in conn.execute(
                text("SELECT path FROM scan_results WHERE scan_id = :s"), {"s": scan_id})}
    finally:
        engine.dispose()


def test_export_reads_confined_to_the_scan_roots_and_only_the_bytes_it_scored(
        tmp_path: Path, tiny_video_model: Path) -> None:  # noqa: F811
    from tests._videos import write_video

    url = f"sqlite:///{tmp_path / 'dfscan.db'}"
    root = tmp_path / "in"
    write_jpegs(root / "sub", 2, size=(64, 64))
    write_jpegs(root, 2, size=(64, 64), start=10)
    write_video(root / "clip.mp4", 8)
    out = cli("scan", root, "--model", tiny_video_model.parent, "--db", url, "--decoder", "pillow", "--no-provenance",
              "--no-follow-symlinks", "--json")
    assert out.exit_code == 0, out.output
    scan_id = json.loads(out.output[out.output.index("{"):])["scan_id"]
    paths = _paths(url, scan_id)
    _decide(url, scan_id, {p: "real" if name.endswith(("0.jpg", "10.jpg")) else "fake" for name, p in paths.items()})
    # After the decisions: a file rewritten, and a folder swapped for a link to one outside the roots.
    (root / "img_00011.jpg").write_bytes((root / "img_00010.jpg").read_bytes())
    outside = tmp_path / "outside"
    shutil.copytree(root / "sub", outside)
    shutil.rmtree(root / "sub")
    (root / "sub").symlink_to(outside, target_is_directory=True)
    out = cli("export-reviews", scan_id, "--out", tmp_path / "export", "--db", url, "--json")
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    assert summary["skipped"] == {"changed": 1, "outside-root": 2}
    assert summary["exported"] == {"real": 1, "fake": 0} and summary["videos"] == {"real": 0, "fake": 1}
    assert [f.read_bytes() for f in (tmp_path / "export" / "real").iterdir()] == [(root / "img_00010.jpg").read_bytes()]
    # The video is a video data set of its own, beside the images (train takes one kind per folder).
    (video,) = (tmp_path / "export" / "videos" / "fake").iterdir()
    assert video.suffix == ".mp4" and video.read_bytes() == (root / "clip.mp4").read_bytes()
    unknown = cli("export-reviews", 999, "--out", tmp_path / "e2", "--db", url)
    assert unknown.exit_code == 1 and "scan 999 does not exist" in unknown.output


def test_export_faces_cuts_the_stored_boxes_as_the_scan_did(
        tmp_path: Path, tiny_onnx_model: Path) -> None:  # noqa: F811
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    from dfscan.workers.faces import crop_square
    from tests.test_faces import paste_faces

    url = f"sqlite:///{tmp_path / 'dfscan.db'}"
    root = tmp_path / "in"
    root.mkdir()
    Image.fromarray(skimage_data.astronaut()).save(root / "astronaut.png")
    background = Image.fromarray(skimage_data.coffee()).resize((900, 600))
    group, _ = paste_faces(background, [(40, 60, 1.0), (420, 250, 1.5)])
    group.save(root / "group.jpg", quality=95)
    Image.fromarray(skimage_data.chelsea()).save(root / "cat.jpg", quality=92)
    out = cli("scan", root, "--model", tiny_onnx_model, "--db", url, "--faces", "on", "--decoder", "pillow",
              "--no-provenance", "--json")
    assert out.exit_code == 0, out.output
    scan_id = json.loads(out.output[out.output.index("{"):])["scan_id"]
    paths = _paths(url, scan_id)
    _decide(url, scan_id, {paths["astronaut.png"]: "real", paths["group.jpg"]: "fake", paths["cat.jpg"]: "real"})
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            faces = conn.execute(text("SELECT path, face_index, x, y, w, h, p_fake FROM scan_faces")).all()
    finally:
        engine.dispose()
    out = cli("export-reviews", scan_id, "--out", tmp_path / "export", "--faces", "--db", url, "--json")
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    group_faces = [f for f in faces if f.path == paths["group.jpg"]]
    assert len(group_faces) == 2
    # A real image gives every face; a fake one its most suspicious face only; an image without a face none.
    assert summary["exported"] == {"real": 1, "fake": 1}
    assert summary["skipped"] == {"not-scored": 1, "other-face": 1}
    expected = {"real": [f for f in faces if f.path == paths["astronaut.png"]],
                "fake": [max(group_faces, key=lambda f: f.p_fake)]}
    for c, (face,) in expected.items():
        (crop_file,) = (tmp_path / "export" / c).iterdir()
        with Image.open(face.path) as im:
            original = im.convert("RGB")
        x0, y0, side = crop_square((face.x, face.y, face.x + face.w, face.y + face.h), *original.size, 1.3)
        with Image.open(crop_file) as crop:
            assert crop.format == "PNG" and crop.size == (side, side)
            assert np.array_equal(np.asarray(crop), np.asarray(original.crop((x0, y0, x0 + side, y0 + side))))
