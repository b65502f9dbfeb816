"""Videos on the model side: `synth --video`, video data sets, training on sequences, export and per-video evaluation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dfscan.cli import main
from dfscan.detector.data import Augment, DataError, find_splits, make_loader
from dfscan.detector.export import export_onnx
from dfscan.detector.model import load_checkpoint
from dfscan.detector.predict import open_model, predict
from dfscan.detector.synth import SynthError
from dfscan.detector.synth_video import VIDEO_NOTICE, synthesize_videos
from dfscan.detector.train import TrainConfig, TrainError, train
from dfscan.detector.video_data import fit_frames, video_eval_transform, video_train_transform
from dfscan.workers.images.decode import Preprocess
from dfscan.workers.video.sample import sample_video

T = 4  # frames per video in these tests: small sequences keep training and export fast
PRE = Preprocess(size=(64, 64))


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def video_set(tmp_path_factory) -> Path:
    """12 synthetic clips (6 pairs) of 6 frames, 48 px, in the 140k layout."""
    root = tmp_path_factory.mktemp("videos") / "data"
    synthesize_videos(root, 12, size=48, frames=6, seed=3)
    return root


@pytest.fixture(scope="module")
def trained(video_set, tmp_path_factory):
    """A tiny detector trained for one epoch on the video set (T frames per video), and its export."""
    root = tmp_path_factory.mktemp("video-train")
    cfg = TrainConfig(backbone="tiny", lstm_hidden=16, batch_size=2 * T, workers=0, epochs=1, target_accuracy=None,
                      frames=T, max_steps_per_epoch=2)
    logs: list[str] = []
    result = train(video_set, root / "train", cfg, log=logs.append)
    export = export_onnx(result.best_checkpoint, root / "model", torch_program=False)
    return result, export, logs


# ----------------------------------------------------------------------------------- synth --video


def test_synth_video_writes_a_labelled_synthetic_archive(video_set: Path) -> None:
    splits = find_splits(video_set)
    assert splits.media == "video" and splits.layout == "140k"
    assert {k: sum(v.values()) for k, v in splits.counts().items()} == {"train": 8, "valid": 2, "test": 2}
    manifest = json.loads((video_set / "synth.json").read_text())
    assert manifest["kind"] == "video" and manifest["notice"] == VIDEO_NOTICE and manifest["frames"] == 6
    assert "NOT a deepfake data set" in (video_set / "README.txt").read_text()
    # Each fake is the twin of a real clip in the same split; the clips decode with the scanner's sampler.
    for split in ("train", "valid", "test"):
        reals = {p.stem for p in (video_set / split / "real").glob("*.mp4")}
        assert reals == {p.stem.split("_")[0] for p in (video_set / split / "fake").glob("*.mp4")}
    real = sorted((video_set / "train" / "real").glob("*.mp4"))[0]
    fake = next((video_set / "train" / "fake").glob(f"{real.stem}_*.mp4"))
    a, b = sample_video(str(real), 6, time_limit_s=10), sample_video(str(fake), 6, time_limit_s=10)
    assert len(a.frames) == len(b.frames) == 6 and a.frames[0].shape == (48, 48, 3) and a.codec == "h264"
    # The camera moves: the first and last frames differ by more than the noise.
    assert np.abs(a.frames[0].astype(int) - a.frames[-1].astype(int)).mean() > 3
    # The fake is the same scene (close to the real clip), not the same pixels.
    diff = np.abs(a.frames[2].astype(int) - b.frames[2].astype(int)).mean()
    assert 0.5 < diff < 30


def test_synth_video_is_deterministic_and_mjpeg_in_avi_works(tmp_path: Path) -> None:
    for name in ("a", "b"):
        synthesize_videos(tmp_path / name, 2, size=32, frames=3, seed=9, layout="flat", video_format="mjpeg")
    clips = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*.avi"))
    assert len(clips) == 2 and clips[0].startswith("fake/")
    for rel in clips:
        x, y = (sample_video(str(tmp_path / d / rel), 3, time_limit_s=10) for d in ("a", "b"))
        assert x.codec == "mjpeg" and all(np.array_equal(f, g) for f, g in zip(x.frames, y.frames))
    with pytest.raises(SynthError, match="not empty"):
        synthesize_videos(tmp_path / "a", 2)
    with pytest.raises(SynthError, match="unknown video format"):
        synthesize_videos(tmp_path / "c", 2, video_format="gif")


def test_synth_video_command_says_synthetic(tmp_path: Path) -> None:
    res = run("synth", str(tmp_path / "s"), "--video", "--n", "6", "--size", "32", "--clip-frames", "3")
    assert res.exit_code == 0, res.output
    assert "SYNTHETIC video clips" in res.output and "NOT a deepfake data set" in res.output
    assert len(list((tmp_path / "s").rglob("*.mp4"))) == 6
    res = run("synth", str(tmp_path / "j"), "--video", "--n", "2", "--size", "32", "--clip-frames", "2", "--json")
    assert json.loads(res.output)["total"] == 2
    res = CliRunner().invoke(main, ["synth", str(tmp_path / "p"), "--video", "--source", "packages"])
    assert res.exit_code != 0 and "procedural scenes only" in res.output


# ------------------------------------------------------------------------------------ data sets


def test_a_folder_of_images_and_videos_is_refused(tmp_path: Path, video_set: Path) -> None:
    from dfscan.detector.synth import synthesize

    synthesize(tmp_path / "mixed", 20, size=32)
    for split in ("train", "valid"):
        shutil.copytree(video_set / split, tmp_path / "mixed" / split, dirs_exist_ok=True)
    with pytest.raises(DataError, match="holds 20 images and 10 videos"):
        find_splits(tmp_path / "mixed")
    assert find_splits(tmp_path / "mixed", media="image").media == "image"
    assert find_splits(tmp_path / "mixed", media="video").media == "video"


def test_fit_frames_repeats_in_time_order() -> None:
    frames = [np.full((2, 2, 3), i, np.uint8) for i in range(3)]
    assert [int(f[0, 0, 0]) for f in fit_frames(frames, 7)] == [0, 0, 0, 1, 1, 2, 2]
    assert [int(f[0, 0, 0]) for f in fit_frames(frames, 3)] == [0, 1, 2]
    assert [int(f[0, 0, 0]) for f in fit_frames(frames, 2)] == [0, 1]


def test_clip_transforms(video_set: Path) -> None:
    path = find_splits(video_set).train[0][0]
    x = video_eval_transform(PRE, 8)(path)  # more frames than the 6 the clip has: repeated up to 8
    assert x.shape == (8, 3, 64, 64) and x.dtype == np.float32
    # The augmentation is one draw per clip: a certain flip flips every frame, and nothing else changes.
    flip = video_train_transform(PRE, 8, Augment(hflip=1.0, degrees=0, brightness=0, contrast=0))(path)
    np.testing.assert_allclose(flip, x[..., ::-1], atol=1e-5)
    loader = make_loader(find_splits(video_set).train, video_eval_transform(PRE, 3), batch_size=4, shuffle=False,
                         media="video")
    clips, labels = next(iter(loader))
    assert clips.shape == (4, 3, 3, 64, 64) and labels.tolist() == [0, 0, 0, 0]


# ------------------------------------------------------------------------ train, export, evaluate


def test_training_on_videos_makes_a_sequence_checkpoint(trained, video_set: Path) -> None:
    result, export, logs = trained
    assert f"videos: {T} frames each, 2 per batch ({2 * T} frames)" in logs
    assert any("on 2 videos" in line for line in logs)
    model, _ = load_checkpoint(result.best_checkpoint)
    assert model.config.trained_on == "videos" and model.config.frames == T
    info = json.loads((result.out_dir / "dataset_info.json").read_text())
    assert info["media"] == "video" and info["splits"]["train"]["total"] == 8
    sidecar = json.loads(export.info_path.read_text())
    assert sidecar["frames"] == T and sidecar["trained_on"] == "videos"
    assert sidecar["video_model"] == "model.video.onnx" and export.video_path.is_file()


def test_resume_refuses_another_sequence_length(trained, video_set: Path) -> None:
    result, _, _ = trained
    cfg = TrainConfig(backbone="tiny", lstm_hidden=16, batch_size=2 * T, workers=0, epochs=2, target_accuracy=None,
                      frames=T + 1, max_steps_per_epoch=1)
    with pytest.raises(TrainError, match=f"frames {T} -> {T + 1}"):
        train(video_set, result.out_dir, cfg, log=lambda s: None)


def test_evaluate_reports_per_video_metrics(trained, video_set: Path, tmp_path: Path) -> None:
    result, export, _ = trained
    res = run("evaluate", str(export.onnx_path), str(video_set), "--out", str(tmp_path / "ev"))
    assert res.exit_code == 0, res.output
    assert f"videos: {T} frames each, scored as sequence" in res.output and "test: 2 videos" in res.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["data"]["media"] == "video" and metrics["data"]["videos"] == 2
    assert metrics["data"]["frames"] == T and metrics["data"]["scoring"] == "sequence"
    assert metrics["data"]["synthetic"] is True
    html = (tmp_path / "ev" / "report.html").read_text()
    assert "2 videos scored" in html and "One verdict per video" in html
    assert html.count("data:image/jpeg;base64,") >= 2  # video thumbnails: a sampled frame each

    # The exported video graph gives the checkpoint's own verdicts.
    items = find_splits(video_set).test
    onnx_pred = predict(open_model(export.onnx_path), items, media="video")
    torch_pred = predict(open_model(result.best_checkpoint), items, media="video")
    assert onnx_pred.paths == torch_pred.paths and len(onnx_pred) == 2
    np.testing.assert_allclose(onnx_pred.logits, torch_pred.logits, atol=1e-4)
    # And those are the model's logits on the sampled sequence.
    model, _ = load_checkpoint(result.best_checkpoint)
    pre = open_model(export.onnx_path).preprocess
    x = torch.from_numpy(np.stack([video_eval_transform(pre, T)(p) for p, _ in items]))
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), onnx_pred.logits, atol=1e-4)


def test_evaluate_without_a_video_graph_averages_frames_and_says_so(trained, video_set: Path, tmp_path: Path) -> None:
    result, _, _ = trained
    export = export_onnx(result.best_checkpoint, tmp_path / "m", video=False, torch_program=False, check=False)
    res = run("evaluate", str(export.onnx_path), str(video_set), "--out", str(tmp_path / "ev"))
    assert res.exit_code == 0, res.output
    assert "per-frame mean (no video graph in the export: a weaker verdict)" in res.output
    assert "a weaker verdict" in (tmp_path / "ev" / "report.html").read_text()


def test_a_bad_video_is_a_failed_item_with_its_reason(trained, video_set: Path, tmp_path: Path) -> None:
    _, export, _ = trained
    data = tmp_path / "data"
    shutil.copytree(video_set, data)
    (data / "test" / "fake" / "broken.mp4").write_bytes(b"")
    (data / "test" / "real" / "still.mp4").write_bytes((video_set / "README.txt").read_bytes())
    pred = predict(open_model(export.onnx_path), find_splits(data).test, media="video", frames=3)
    reasons = dict(pred.failed)
    assert len(pred) == 2 and len(reasons) == 2
    assert reasons[str(data / "test" / "fake" / "broken.mp4")].startswith("empty:")
    assert reasons[str(data / "test" / "real" / "still.mp4")].startswith("not-video:")


def _scan_p_fake(folder: Path, model: Path, db_url: str) -> dict[str, float]:
    from sqlalchemy import text

    from dfscan import db

    res = run("scan", str(folder), "--model", str(model), "--db", db_url, "--decoder", "pillow")
    assert res.exit_code == 0, res.output
    engine = db.make_engine(db_url)
    try:
        with engine.connect() as conn:
            return {r.path: r.p_fake for r in conn.execute(text("SELECT path, p_fake FROM scan_results"))}
    finally:
        engine.dispose()


@pytest.mark.parametrize("graph", ["sequence", "per-frame"])
def test_evaluation_scores_each_video_as_a_scan_does(trained, video_set: Path, tmp_path: Path, sqlite_url: str,
                                                      graph: str) -> None:
    """The same p_fake per video as `dfscan scan`, a video with fewer frames than T included (no padding)."""
    from dfscan.trt.base import softmax
    from tests._videos import write_video

    result, _, _ = trained
    export = export_onnx(result.best_checkpoint, tmp_path / "m", video=graph == "sequence", torch_program=False)
    data = tmp_path / "data"
    shutil.copytree(video_set, data)
    write_video(data / "test" / "real" / "short.webm", 2, codec="vp9-webm")  # 2 frames, T is 4
    items = find_splits(data).test
    source = open_model(export.onnx_path)
    pred = predict(source, items, media="video")
    assert pred.scoring == ("sequence" if graph == "sequence" else "per-frame mean") and len(pred) == 3
    evaluated = dict(zip(pred.paths, softmax(pred.logits, source.temperature)[:, 1]))
    scanned = _scan_p_fake(data / "test", export.onnx_path.parent, sqlite_url)
    assert sorted(scanned) == sorted(evaluated)
    for path, p in evaluated.items():
        assert scanned[path] == pytest.approx(p, abs=1e-5), path
