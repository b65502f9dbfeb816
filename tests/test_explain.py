"""`dfscan explain`: Grad-CAM heatmaps that follow the model, stored per image, every selected image accounted for."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import text

from dfscan import db
from dfscan.cli import main
from tests._explain_data import (
    SIZE,
    SQUARE_A,
    SQUARE_B,
    both_signals_set,
    inside,
    train_detector,
    training_set,
)
from tests._models import tiny_onnx_model  # noqa: F401 - fixture

N_TRAIN = 96
N_TEST = 20
POINTING_MIN = 0.8


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _copy_without_explanations(url: str, to: Path) -> str:
    """A copy of a scan's SQLite database with no explanations yet (tests here share one scan)."""
    shutil.copy(url.removeprefix("sqlite:///"), to)
    engine = db.make_engine(f"sqlite:///{to}")
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM explanations"))
    engine.dispose()
    return f"sqlite:///{to}"


def _explanations(url: str, scan_id: int) -> list[db.ExplanationRow]:
    engine = db.make_engine(url)
    try:
        with db.session_factory(engine)() as session:
            return db.explanations_for(session, scan_id)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two tiny detectors (fake signal in square A, in square B), each exported, and a test folder scanned by each."""
    from dfscan.detector.export import export_onnx

    base = tmp_path_factory.mktemp("explain")
    test_dir = base / "archive"
    both_signals_set(test_dir, N_TEST, seed=99)
    out: dict = {"base": base, "archive": test_dir}
    for name, signal, seed in (("A", "red", 1), ("B", "blue", 2)):
        items = training_set(base / f"train_{name}", signal, N_TRAIN, seed=seed)
        ckpt = train_detector(items, base / f"model_{name}" / "checkpoint" / "model.pt", seed=seed)
        onnx = export_onnx(ckpt, base / f"model_{name}").onnx_path
        url = f"sqlite:///{base / f'scan_{name}.db'}"
        res = cli("scan", str(test_dir), "--model", str(onnx), "--db", url, "--json")
        assert res.exit_code == 0, res.output
        out[name] = {"checkpoint": ckpt, "onnx": onnx, "url": url, "scan_id": json.loads(res.output)["scan_id"]}
    return out


def _pointing(rows: list[db.ExplanationRow], square: tuple[int, int, int, int]) -> float:
    ok = [r for r in rows if r.status == "ok"]
    assert len(ok) == len(rows), [(r.path, r.reason, r.detail) for r in rows if r.status != "ok"]
    return sum(inside(r.peak_x, r.peak_y, square) for r in ok) / len(rows)


@pytest.mark.slow  # trains two tiny detectors once per module (~40 s of CPU)
def test_heatmap_peaks_fall_in_the_square_the_model_learnt(trained):
    """The pointing game: each model's peak lands in its own square on the same images."""
    scores = {}
    for name, own, other in (("A", SQUARE_A, SQUARE_B), ("B", SQUARE_B, SQUARE_A)):
        m = trained[name]
        res = cli("explain", str(m["scan_id"]), "--db", m["url"], "--checkpoint", str(m["checkpoint"]),
                  "--top", str(N_TEST), "--json")
        assert res.exit_code == 0, res.output
        summary = json.loads(res.output)
        assert summary["explained"] == summary["selected"] == N_TEST
        assert summary["verified_by"] == "checkpoint sha256 recorded at export"
        rows = _explanations(m["url"], m["scan_id"])
        assert len(rows) == N_TEST and all(r.width == SIZE and r.height == SIZE for r in rows)
        scores[name] = (_pointing(rows, own), _pointing(rows, other))
        # The stored score is the checkpoint's own, and it agrees with the scan's.
        engine = db.make_engine(m["url"])
        with engine.connect() as conn:
            stored = dict(conn.execute(text("SELECT path, p_fake FROM results WHERE scan_id = :s"),
                                       {"s": m["scan_id"]}).all())
        engine.dispose()
        assert all(abs(r.p_fake - stored[r.path]) < 1e-3 for r in rows)
        assert min(stored.values()) > 0.5, f"model {name} does not call the two-signal images fake"
    print(f"\npointing game, {N_TEST} images with both signals: "
          f"model A (signal in A) peak in A {scores['A'][0]:.2f}, in B {scores['A'][1]:.2f}; "
          f"model B (signal in B) peak in B {scores['B'][0]:.2f}, in A {scores['B'][1]:.2f}")
    assert scores["A"][0] >= POINTING_MIN and scores["B"][0] >= POINTING_MIN, scores
    assert scores["A"][1] <= 1 - POINTING_MIN and scores["B"][1] <= 1 - POINTING_MIN, scores


@pytest.mark.slow  # trains two tiny detectors once per module (~40 s of CPU)
def test_overlays_are_small_pngs_with_the_heat_where_the_peak_is(trained):
    m = trained["A"]
    rows = [r for r in _explanations(m["url"], m["scan_id"]) if r.status == "ok"]
    if not rows:  # the pointing-game test fills the table; alone, this test explains first
        assert cli("explain", str(m["scan_id"]), "--db", m["url"], "--checkpoint", str(m["checkpoint"])).exit_code == 0
        rows = _explanations(m["url"], m["scan_id"])
    for r in rows:
        assert r.overlay is not None and len(r.overlay) <= 64 * 1024
        im = Image.open(io.BytesIO(r.overlay))
        assert im.format == "PNG" and max(im.size) <= 160
        assert r.method == "captum.LayerGradCam" and r.target_layer == "backbone.14"
        # The overlay differs from the plain image most around the peak (heat is blended there).
        plain = Image.open(r.path).convert("RGB").resize(im.size)
        diff = np.abs(np.asarray(im.convert("RGB"), np.float32) - np.asarray(plain, np.float32)).sum(axis=2)
        sx, sy = im.size[0] / r.width, im.size[1] / r.height
        px, py = int(r.peak_x * sx), int(r.peak_y * sy)
        assert diff[py, px] > np.median(diff), r.path


@pytest.mark.slow  # trains two tiny detectors once per module (~40 s of CPU)
def test_a_checkpoint_that_is_not_the_scans_model_is_refused_with_a_reason_per_image(trained, tmp_path):
    a, b = trained["A"], trained["B"]
    url = _copy_without_explanations(a["url"], tmp_path / "copy.db")
    res = CliRunner().invoke(main, ["explain", str(a["scan_id"]), "--db", url, "--checkpoint", str(b["checkpoint"]),
                                    "--top", "5"])
    assert res.exit_code == 1 and "refused" in res.output and "sha256" in res.output and "Traceback" not in res.output
    rows = _explanations(url, a["scan_id"])
    assert len(rows) == 5 and {(r.status, r.reason) for r in rows} == {("unexplainable", "checkpoint-mismatch")}

    # Without a recorded checkpoint hash, the logits against ONNX Runtime decide: the same verdict.
    sidecar = a["onnx"].parent / "model_info.json"
    onnx_copy = tmp_path / "model" / "model.onnx"
    onnx_copy.parent.mkdir()
    shutil.copy(a["onnx"], onnx_copy)
    record = json.loads(sidecar.read_text())
    del record["checkpoint_sha256"]
    (onnx_copy.parent / "model_info.json").write_text(json.dumps(record))
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE models SET path = :p"), {"p": str(onnx_copy)})
    engine.dispose()
    res = CliRunner().invoke(main, ["explain", str(a["scan_id"]), "--db", url, "--checkpoint", str(b["checkpoint"]),
                                    "--top", "3"])
    assert res.exit_code == 1 and "logits differ" in res.output, res.output
    res = cli("explain", str(a["scan_id"]), "--db", url, "--checkpoint", str(a["checkpoint"]), "--top", "3", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["verified_by"].startswith("logits vs ONNX Runtime")

    # With the scan's ONNX file gone there is nothing to check against: refused, even for the right checkpoint.
    onnx_copy.unlink()
    res = CliRunner().invoke(main, ["explain", str(a["scan_id"]), "--db", url, "--checkpoint", str(a["checkpoint"]),
                                    "--top", "3"])
    assert res.exit_code == 1 and "gone" in res.output, res.output
    rows = [r for r in _explanations(url, a["scan_id"]) if r.reason == "checkpoint-unverified"]
    assert len(rows) == 3


@pytest.mark.slow  # trains two tiny detectors once per module (~40 s of CPU)
def test_files_gone_broken_or_changed_since_the_scan_each_get_a_reason(trained, tmp_path):
    """Every selected image ends as one row: explained, or why not; nothing crashes the batch."""
    from dfscan.detector.export import export_onnx

    a = trained["A"]
    archive = tmp_path / "archive"
    shutil.copytree(trained["archive"], archive)
    (archive / "empty.png").write_bytes(b"")  # an error row at scan time
    url = f"sqlite:///{tmp_path / 'd.db'}"
    onnx = export_onnx(a["checkpoint"], tmp_path / "model").onnx_path
    res = cli("scan", str(archive), "--model", str(onnx), "--db", url, "--json")
    assert res.exit_code == 0, res.output
    scan_id = json.loads(res.output)["scan_id"]
    files = sorted(archive.glob("both_*.png"))
    files[0].unlink()  # gone
    files[1].write_bytes(files[1].read_bytes()[:200])  # truncated
    files[2].write_bytes(b"not an image at all")  # not an image any more
    Image.new("RGB", (SIZE, SIZE), (128, 128, 128)).save(files[3])  # replaced: the stored score no longer holds
    wanted = [str(f) for f in files[:6]] + [str(archive / "empty.png")]
    args = ["explain", str(scan_id), "--db", url, "--checkpoint", str(a["checkpoint"]), "--json", "--batch-size", "2"]
    res = cli(*args, *(x for p in wanted for x in ("--paths", p)))
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["selected"] == 7 and summary["explained"] == 2
    rows = {r.path: r for r in _explanations(url, scan_id)}
    assert sorted(rows) == sorted(wanted)
    reasons = {Path(p).name: (r.status, r.reason) for p, r in rows.items()}
    assert reasons[files[0].name] == ("unexplainable", "missing")
    assert reasons[files[1].name] == ("unexplainable", "truncated")
    assert reasons[files[2].name] == ("unexplainable", "not-image")
    assert reasons[files[3].name] == ("unexplainable", "score-mismatch")
    assert reasons["empty.png"] == ("unexplainable", "not-scored")
    assert reasons[files[4].name] == reasons[files[5].name] == ("ok", None)
    assert all(r.detail for r in rows.values() if r.status != "ok")

    # Explaining again replaces a path's rows: still one each.
    res = cli(*args, "--paths", str(files[4]))
    assert res.exit_code == 0
    assert len([r for r in _explanations(url, scan_id) if r.path == str(files[4])]) == 1

    # A path the scan never saw is a one-line error, not a row.
    res = CliRunner().invoke(main, [*args, "--paths", str(tmp_path / "never.png")])
    assert res.exit_code == 1 and "no row" in res.output and "Traceback" not in res.output


@pytest.mark.slow  # trains two tiny detectors once per module (~40 s of CPU)
def test_min_p_and_top_select_the_most_suspicious_first(trained, tmp_path):
    a = trained["A"]
    url = _copy_without_explanations(a["url"], tmp_path / "copy.db")
    engine = db.make_engine(url)
    with engine.connect() as conn:
        scores = conn.execute(text("SELECT path, p_fake FROM results WHERE scan_id = :s ORDER BY p_fake DESC, path"),
                              {"s": a["scan_id"]}).all()
    engine.dispose()
    cut = scores[7].p_fake
    res = cli("explain", str(a["scan_id"]), "--db", url, "--checkpoint", str(a["checkpoint"]), "--top", "5",
              "--min-p", repr(cut))
    assert res.exit_code == 0, res.output
    assert sorted(r.path for r in _explanations(url, a["scan_id"])) == sorted(p for p, _ in scores[:5])


def test_video_frames_go_through_the_lstm_together_and_each_gets_a_heatmap():
    """The 4-D wrapper: (N*T, 3, H, W) rows fold into (N, T, ...) sequences; one heatmap per frame."""
    import torch

    from dfscan.detector._cam import FramesAsBatch, GradCam
    from tests._models import build_tiny_detector

    model = build_tiny_detector()
    x = torch.randn(2, 3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x)
        got = FramesAsBatch(model, frames=3)(x.flatten(0, 1))
    assert torch.allclose(got, want, atol=1e-5)
    cams, logits = GradCam(build_tiny_detector(), frames=3)(x.flatten(0, 1))
    assert cams.shape == (6, 7, 7) and logits.shape == (2, 2)
    assert np.allclose(logits, want.numpy(), atol=1e-4)
    assert cams.min() >= 0 and cams.max() <= 1


def test_only_the_target_block_needs_gradients():
    from dfscan.detector._cam import GradCam
    from tests._models import build_tiny_detector

    cam = GradCam(build_tiny_detector())
    trainable = {n for n, p in cam.model.named_parameters() if p.requires_grad}
    assert trainable == {"backbone.12.weight", "backbone.13.weight", "backbone.13.bias"}


def test_explanations_table_round_trip(db_engine):
    """Both backends: rows with and without overlays, replaced per path; the overlay bound is enforced."""
    with db.session_factory(db_engine)() as session:
        model_id = db.get_or_create_model(session, sha256="b" * 64, name="m", path="/m.onnx", info={})
        scan_id = db.create_scan(session, name="s", roots=["/"], model_id=model_id, threshold=0.5, settings={})
        common = dict(method="captum.LayerGradCam", target_layer="backbone.14", checkpoint_sha256="c" * 64)
        png = b"\x89PNG" + bytes(range(256)) * 10
        db.write_explanations(session, scan_id, [
            db.ExplanationRow("/a.jpg", "ok", p_fake=0.9, peak_x=3, peak_y=4, width=10, height=12, overlay=png,
                              **common),
            db.ExplanationRow("/b.jpg", "unexplainable", reason="missing", detail="file not found", **common),
            db.ExplanationRow("/c.jpg", "ok", face_index=1, peak_x=1, peak_y=1, overlay=png, **common),
        ])
        session.commit()
        db.write_explanations(session, scan_id, [db.ExplanationRow("/b.jpg", "ok", overlay=png, **common)])
        session.commit()
        rows = db.explanations_for(session, scan_id)
        assert [(r.path, r.status, r.face_index) for r in rows] == [
            ("/a.jpg", "ok", None), ("/b.jpg", "ok", None), ("/c.jpg", "ok", 1)]
        assert rows[0].overlay == png and rows[0].peak_x == 3
        assert db.explanations_for(session, scan_id, ["/c.jpg"])[0].face_index == 1
        with pytest.raises(ValueError):
            db.ExplanationRow("/d.jpg", "ok", overlay=b"x" * (64 * 1024 + 1), **common)
        with pytest.raises(ValueError):
            db.ExplanationRow("/d.jpg", "unexplainable", **common)


@pytest.mark.postgres
def test_explain_end_to_end_on_postgresql(pg_url, tiny_onnx_model, tmp_path):
    """Scan into PostgreSQL, explain, read the rows back: blobs and peaks survive the round trip."""
    from tests._images import write_jpegs

    write_jpegs(tmp_path / "imgs", 4, size=(120, 90))
    res = cli("scan", str(tmp_path / "imgs"), "--model", str(tiny_onnx_model), "--db", pg_url, "--json")
    assert res.exit_code == 0, res.output
    scan_id = json.loads(res.output)["scan_id"]
    checkpoint = tiny_onnx_model.parent / "checkpoint" / "tiny.pt"
    res = cli("explain", str(scan_id), "--db", pg_url, "--checkpoint", str(checkpoint), "--json")
    assert res.exit_code == 0, res.output
    rows = _explanations(pg_url, scan_id)
    assert len(rows) == 4 == json.loads(res.output)["selected"]
    for r in rows:
        assert (r.status, r.reason) in (("ok", None), ("unexplainable", "flat-heatmap")), r
        if r.status == "ok":
            assert (r.width, r.height) == (120, 90) and 0 <= r.peak_x < 120 and 0 <= r.peak_y < 90
            assert Image.open(io.BytesIO(r.overlay)).format == "PNG"
