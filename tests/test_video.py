"""Videos: the sampler (seeking, rotation, codecs, every bad input), the walker, the scan's rows.

Every video is written by PyAV itself (tests/_videos.py); each frame shows its
own index, so the tests check which frame the sampler took, not only how many.
"""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfscan.workers.reading.errors import REASONS, ImageError, VideoError
from dfscan.workers.video.sample import sample_video
from tests._videos import (
    CODECS,
    corrupt_packets,
    index_frame,
    read_index,
    face_box,
    tkhd_matrix,
    truncate_without_moov,
    write_audio_only,
    write_face_video,
    write_video,
)


def _on_screen(target_s: float, fps: float) -> int:
    """The index of the frame on screen at ``target_s`` in a constant-rate video starting at 0."""
    return int(np.floor(target_s * fps + 1e-9))


def _targets(duration_s: float, t: int) -> list[float]:
    return [(k + 0.5) * duration_s / t for k in range(t)]


# -- codecs and containers -------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["h264-mp4", "vp9-webm", "mjpeg-avi", "h264-mkv"])
def test_each_codec_gives_the_frames_on_screen_at_evenly_spaced_times(tmp_path, codec):
    path = write_video(tmp_path / f"v{CODECS[codec].suffix}", 100, codec=codec, fps=10, gop=20)
    video = sample_video(str(path), 16)
    assert video.duration_s == pytest.approx(10.0)
    assert (video.width, video.height) == (64, 48)
    assert video.indices == list(range(16))
    assert [read_index(f) for f in video.frames] == [_on_screen(t, 10) for t in _targets(10.0, 16)]
    assert video.timestamps_s == pytest.approx([_on_screen(t, 10) / 10 for t in _targets(10.0, 16)])
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in video.frames)
    assert video.notes == ()


def test_frames_parameter_sets_how_many(tmp_path):
    path = write_video(tmp_path / "v.mp4", 60, fps=10)
    assert len(sample_video(str(path), 4).frames) == 4
    assert [read_index(f) for f in sample_video(str(path), 3).frames] == [10, 30, 50]


def test_a_rotated_phone_video_comes_out_upright(tmp_path):
    # The scene is red on top, blue below; the camera stored it turned 90 degrees counter-clockwise
    # and wrote a display matrix asking for 90 degrees clockwise, as a phone held upright does.
    scene = np.zeros((48, 64, 3), np.uint8)
    scene[:16] = (255, 0, 0)
    scene[16:] = (0, 0, 255)
    scene[:, :8] = (0, 255, 0)  # a green left edge: tells a rotation from a flip
    stored = np.ascontiguousarray(np.rot90(scene, 1))
    path = write_video(tmp_path / "phone.mp4", 10, size=(48, 64), draw=lambda i: stored, rotation=-90)
    # The matrix in the file is the phone's (a=0, b=1, c=-1, d=0 in 16.16), read from its bytes.
    a, b, _u, c, d, *_ = tkhd_matrix(path)
    assert (a, b, c, d) == (0, 65536, -65536, 0)
    video = sample_video(str(path), 4)
    assert (video.width, video.height) == (64, 48)
    for frame in video.frames:
        assert frame.shape == (48, 64, 3)
        assert np.abs(frame.astype(int) - scene.astype(int)).mean() < 12


def test_seeking_makes_a_ten_minute_video_cost_about_what_a_ten_second_one_does(tmp_path):
    # 10 minutes at 2 frames/s, a keyframe every 20 frames (10 s); the same GOP for 10 seconds.
    long = write_video(tmp_path / "long.mp4", 1200, fps=2, gop=20)
    short = write_video(tmp_path / "short.mp4", 20, fps=2, gop=20)
    video = sample_video(str(long), 16)
    assert video.duration_s == pytest.approx(600.0)
    assert [read_index(f) for f in video.frames] == [_on_screen(t, 2) for t in _targets(600.0, 16)]
    # Seeking decodes at most one GOP per frame, never the 1200 frames of the stream.
    assert video.decoded <= 16 * 20
    short_video = sample_video(str(short), 16)
    assert short_video.decoded == 20  # close targets: decoded on, not sought again
    # The cost ratio in decoded frames (the bench prints the time ratio).
    assert video.decoded / short_video.decoded < 16 * 20 / 20


def test_variable_frame_rate_samples_by_time_not_by_frame_count(tmp_path):
    # Frame i at i**1.5 / 10 s: frames crowd the start and thin out later.
    times_ms = [int(1000 * (i**1.5) / 10) for i in range(50)]
    path = write_video(tmp_path / "vfr.mkv", 50, codec="h264-mkv", pts=times_ms, time_base=Fraction(1, 1000))
    video = sample_video(str(path), 16)
    duration = video.duration_s
    expected = [max(i for i, t in enumerate(times_ms) if t / 1000 <= target) for target in _targets(duration, 16)]
    assert [read_index(f) for f in video.frames] == expected
    # By frame count the picks would be evenly spaced indices instead.
    assert expected != [int((k + 0.5) * 50 / 16) for k in range(16)]


# -- bad input: each a reason, or a verdict with a note ---------------------------------------


def _refused(path, code, *words, **kwargs) -> VideoError:
    with pytest.raises(VideoError) as info:
        sample_video(str(path), 16, **kwargs)
    assert info.value.code == code, info.value.message
    assert info.value.code in REASONS
    assert isinstance(info.value, ImageError)
    for word in words:
        assert word in info.value.message
    return info.value


def test_a_zero_byte_video_is_empty(tmp_path):
    (tmp_path / "zero.mp4").write_bytes(b"")
    _refused(tmp_path / "zero.mp4", "empty")


def test_a_truncated_mp4_without_its_moov_atom(tmp_path):
    path = truncate_without_moov(write_video(tmp_path / "cut.mp4", 100))
    _refused(path, "truncated", "moov")


def test_an_audio_only_file_has_no_video_stream(tmp_path):
    _refused(write_audio_only(tmp_path / "song.mp4"), "no-video-stream", "audio")


def test_a_still_image_named_mp4_is_not_a_video(tmp_path):
    Image.fromarray(index_frame(3)).save(tmp_path / "photo.mp4", format="JPEG")
    _refused(tmp_path / "photo.mp4", "not-video", "JPEG image")
    (tmp_path / "text.mkv").write_bytes(b"hello, not a video at all" * 10)
    _refused(tmp_path / "text.mkv", "not-video", "unknown format")


def test_a_missing_file(tmp_path):
    _refused(tmp_path / "gone.mp4", "missing")


def test_a_one_frame_video_gives_its_one_frame(tmp_path):
    video = sample_video(str(write_video(tmp_path / "one.mp4", 1)), 16)
    assert [read_index(f) for f in video.frames] == [0]
    assert any("1 distinct frames" in note for note in video.notes)


def test_a_video_shorter_than_t_frames_gives_each_frame_once(tmp_path):
    video = sample_video(str(write_video(tmp_path / "five.webm", 5, codec="vp9-webm")), 16)
    assert [read_index(f) for f in video.frames] == [0, 1, 2, 3, 4]
    assert video.indices == sorted(video.indices) and len(set(video.indices)) == 5
    assert any("5 distinct frames" in note for note in video.notes)


def test_corrupt_packets_mid_stream_score_what_decodes_and_say_how_many(tmp_path):
    path = write_video(tmp_path / "bad.mp4", 100, fps=10, gop=10)
    assert corrupt_packets(path, (0.3, 0.6)) == 30  # frames 30..59
    video = sample_video(str(path), 16)
    expected = [_on_screen(t, 10) for t in _targets(10.0, 16)]
    kept = [e for e in expected if not 30 <= e < 60]
    assert [read_index(f) for f in video.frames] == kept
    lost = 16 - len(kept)
    assert f"{lost} of 16 frames could not be decoded" in video.notes
    assert "30 packets failed to decode" in video.notes


def test_a_video_whose_every_packet_is_corrupt_has_no_frames(tmp_path):
    path = write_video(tmp_path / "dead.mp4", 20, fps=10, gop=5)
    corrupt_packets(path, (0.0, 1.0))
    _refused(path, "no-frames")


def test_two_video_streams_take_the_first_and_say_so(tmp_path):
    video = sample_video(str(write_video(tmp_path / "two.mp4", 30, second_video=True)), 8)
    assert [read_index(f) for f in video.frames] == [_on_screen(t, 10) for t in _targets(3.0, 8)]
    assert "2 video streams; took the first" in video.notes


def test_an_8k_video_is_downscaled_while_decoding(tmp_path):
    path = write_video(tmp_path / "8k.avi", 1, codec="mjpeg-avi", size=(7680, 4320),
                       draw=lambda i: index_frame(1234, 7680, 4320))
    video = sample_video(str(path), 16)
    assert (video.width, video.height) == (7680, 4320)
    assert video.frames[0].shape == (1080, 1920, 3)  # 16 frames of 8K would hold 1.6 GB
    assert read_index(video.frames[0]) == 1234
    assert "frames downscaled from 7680x4320 to 1920x1080" in video.notes
    _refused(path, "too-many-pixels", "7680x4320", max_pixels=7680 * 4320 - 1)


def test_a_video_that_decodes_for_too_long_is_stopped_by_the_time_limit(tmp_path):
    # One keyframe and 120 frames of noise: decoding to the last target takes far longer than 0.05 s.
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (360, 640, 3), dtype=np.uint8) for _ in range(4)]
    path = write_video(tmp_path / "slow.mp4", 120, fps=1000, size=(640, 360), gop=100_000, draw=lambda i: noise[i % 4])
    start = time.monotonic()
    _refused(path, "timeout", "0.05 s", time_limit_s=0.05)
    assert time.monotonic() - start < 1.0
    assert len(sample_video(str(path), 4).frames) == 4  # with time, the same file samples


# -- the scan: one row per file, sequences through the video model -----------------------------

import json  # noqa: E402
import shutil  # noqa: E402

from click.testing import CliRunner  # noqa: E402
from sqlalchemy import text  # noqa: E402

from dfscan import db  # noqa: E402
from dfscan.cli import main  # noqa: E402
from tests._models import build_tiny_detector, tiny_video_model  # noqa: E402,F401 - fixture

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _query(db_url: str, sql: str, **params) -> list:
    engine = db.make_engine(db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql), params).all()
    finally:
        engine.dispose()


def _mixed_folder(folder: Path) -> dict[str, tuple[str, str, str | None]]:
    """Images and videos, good and bad; name -> (kind, status, error_code)."""
    folder.mkdir(parents=True)
    write_video(folder / "clip.mp4", 40, size=(96, 64))
    write_video(folder / "clip.webm", 20, codec="vp9-webm")
    write_video(folder / "clip.avi", 12, codec="mjpeg-avi")
    write_video(folder / "phone.mov", 10, rotation=-90)
    write_video(folder / "one.mkv", 1, codec="h264-mkv")
    corrupt_packets(write_video(folder / "glitch.mp4", 100, gop=10), (0.3, 0.6))  # frames 30..59 broken
    (folder / "zero.mp4").write_bytes(b"")
    truncate_without_moov(write_video(folder / "cut.m4v", 60))
    write_audio_only(folder / "song.mp4")
    Image.fromarray(index_frame(7)).save(folder / "photo.mp4", format="JPEG")
    Image.fromarray(index_frame(7)).save(folder / "photo.png")
    Image.fromarray(index_frame(9)).save(folder / "photo.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    (folder / "notes.txt").write_text("not scanned")
    return {
        "clip.mp4": ("video", "ok", None), "clip.webm": ("video", "ok", None), "clip.avi": ("video", "ok", None),
        "phone.mov": ("video", "ok", None), "one.mkv": ("video", "ok", None), "glitch.mp4": ("video", "ok", None),
        "zero.mp4": ("video", "error", "empty"), "cut.m4v": ("video", "error", "truncated"),
        "song.mp4": ("video", "error", "no-video-stream"), "photo.mp4": ("video", "error", "not-video"),
        "photo.png": ("image", "ok", None), "photo.jpg": ("image", "ok", None),
        "broken.jpg": ("image", "error", "not-image"),
    }


def test_a_mixed_folder_scan_has_exactly_one_row_per_file(tmp_path, tiny_video_model, db_url):  # noqa: F811
    expected = _mixed_folder(tmp_path / "in")
    out = _cli("scan", str(tmp_path / "in"), "--model", str(tiny_video_model.parent), "--db", db_url,
               "--decoder", "pillow", "--batch-size", "8", "--json")
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output[out.output.index("{"):])
    assert summary["total"] == len(expected) and summary["ok"] == 8 and summary["errors"] == 5
    rows = _query(db_url, "SELECT v.*, r.error_code FROM scan_results AS v JOIN results AS r "
                          "ON r.scan_id = v.scan_id AND r.path = v.path WHERE v.scan_id = :s", s=summary["scan_id"])
    assert sorted(Path(r.path).name for r in rows) == sorted(expected)  # one row per file, none twice
    frames = _query(db_url, "SELECT * FROM scan_frames WHERE scan_id = :s ORDER BY path, track, frame_index",
                    s=summary["scan_id"])
    by_video: dict[str, list] = {}
    for f in frames:
        by_video.setdefault(Path(f.path).name, []).append(f)
    for r in rows:
        name = Path(r.path).name
        kind, status, code = expected[name]
        assert (r.kind, r.status, r.error_code) == (kind, status, code), (name, r.error)
        if kind == "image":
            assert r.frames is None and r.duration_s is None and name not in by_video
        elif status == "ok":
            # The sidecar's T (4) frames, one sequence (faces off: track 0, no box) whose p_fake is the row's.
            fs = by_video[name]
            assert r.frames == len(fs) == {"one.mkv": 1, "glitch.mp4": 3}.get(name, 4)
            assert all(f.track == 0 and f.x is None and f.p_fake is None for f in fs)
            assert all(f.track_p_fake == pytest.approx(r.p_fake) for f in fs)
            assert [f.timestamp_s for f in fs] == sorted(f.timestamp_s for f in fs)
            assert r.duration_s > 0 and 0 <= r.p_fake <= 1
        else:
            assert r.p_fake is None and r.error and name not in by_video
    one = next(r for r in rows if r.path.endswith("one.mkv"))
    assert "1 distinct frames" in one.notes
    # Corrupt packets mid-stream: scored from what decodes, and the row says how many did not.
    glitch = next(r for r in rows if r.path.endswith("glitch.mp4"))
    assert "1 of 4 frames could not be decoded" in glitch.notes and "30 packets failed" in glitch.notes

    # The results command shows the kind and the frames scored.
    out = _cli("results", "--db", db_url, "--format", "csv")
    header, *lines = out.output.splitlines()
    assert "kind" in header.split(",") and "frames" in header.split(",")
    clip = next(line for line in lines if "clip.mp4" in line).split(",")
    assert clip[header.split(",").index("kind")] == "video" and clip[header.split(",").index("frames")] == "4"


def test_the_sequence_verdict_is_the_lstm_over_the_sampled_frames(tmp_path, tiny_video_model, sqlite_url):  # noqa: F811
    import torch

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(1)
    pictures = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(30)]
    write_video(folder / "v.avi", 30, codec="mjpeg-avi", draw=lambda i: pictures[i])
    out = _cli("scan", str(folder), "--model", str(tiny_video_model.parent), "--db", sqlite_url, "--frames", "6")
    assert out.exit_code == 0, out.output
    ((p_fake, frames),) = _query(sqlite_url, "SELECT p_fake, frames FROM scan_results")
    assert frames == 6
    # The same six frames, made into the model's input here and run through PyTorch as one sequence.
    video = sample_video(str(folder / "v.avi"), 6)
    x = np.stack([(np.asarray(Image.fromarray(f).resize((224, 224), Image.Resampling.BILINEAR), np.float32) / 255
                   - MEAN) / STD for f in video.frames]).transpose(0, 3, 1, 2)[None]
    with torch.no_grad():
        logits = build_tiny_detector()(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    assert p_fake == pytest.approx(float(torch.softmax(torch.from_numpy(logits), 1)[0, 1]), abs=1e-4)


def _one_video_and_the_image_model(tmp_path: Path, video_model: Path, frames: int,
                                   drop: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """A folder with one video, and ``model.onnx`` with its sidecar copied alone (less the keys ``drop``)."""
    model = tmp_path / "m" / "model.onnx"
    model.parent.mkdir()
    shutil.copy(video_model.parent / "model.onnx", model)
    sidecar = json.loads((video_model.parent / "model_info.json").read_text())
    (model.parent / "model_info.json").write_text(json.dumps({k: v for k, v in sidecar.items() if k not in drop}))
    folder = tmp_path / "in"
    folder.mkdir()
    write_video(folder / "v.mp4", frames)
    return folder, model


def test_without_a_video_model_frames_are_scored_alone_and_averaged(tmp_path, tiny_video_model, sqlite_url):  # noqa: F811
    folder, model = _one_video_and_the_image_model(tmp_path, tiny_video_model, 30,
                                                   drop=("video_model", "video_model_sha256"))
    out = _cli("scan", str(folder), "--model", str(model), "--db", sqlite_url)
    assert out.exit_code == 0, out.output
    ((p_fake, notes),) = _query(sqlite_url, "SELECT p_fake, notes FROM scan_results")
    ps = [r.p_fake for r in _query(sqlite_url, "SELECT p_fake FROM scan_frames ORDER BY frame_index")]
    assert len(ps) == 4 and all(p is not None for p in ps)  # the sidecar's frames: 4
    assert p_fake == pytest.approx(float(np.mean(ps)))
    assert "no video model" in notes and "weaker" in notes


def test_a_model_copied_without_its_video_graph_scores_per_frame_and_says_why(tmp_path, tiny_video_model,  # noqa: F811
                                                                               sqlite_url):
    folder, model = _one_video_and_the_image_model(tmp_path, tiny_video_model, 10)
    out = _cli("scan", str(folder), "--model", str(model), "--db", sqlite_url)
    assert out.exit_code == 0, out.output
    ((notes, frames),) = _query(sqlite_url, "SELECT notes, frames FROM scan_results")
    assert "no video model" in notes and "model.video.onnx" in notes and "not beside model.onnx" in notes
    assert frames == 4
    # A video graph that is there but is not the one the sidecar names fails the scan before any work.
    shutil.copy(tiny_video_model.parent / "model.onnx", model.parent / "model.video.onnx")
    out = CliRunner().invoke(main, ["scan", str(folder), "--model", str(model), "--db", sqlite_url])
    assert out.exit_code == 1 and "model.video.onnx" in out.output


def test_batches_are_bounded_by_frames_not_videos(tmp_path, tiny_video_model):  # noqa: F811
    from dfscan.core.settings import Settings
    from dfscan.trt import load_runtime
    from dfscan.trt.model_info import inspect_model
    from dfscan.workers.images.decode import PillowDecoder, Preprocess
    from dfscan.workers.scoring import Resources, Verdict, split
    from dfscan.workers.scoring.video_stage import video_stage
    from tests._stages import stages as make_stages

    class Recording:
        """The real sequence runtime, noting the shape of every batch it runs."""

        def __init__(self, runtime):
            self.runtime, self.shapes = runtime, []

        def __getattr__(self, name):
            return getattr(self.runtime, name)

        def infer(self, batch):
            self.shapes.append(batch.shape)
            return self.runtime.infer(batch)

    names = [f"v{i}.mkv" for i in range(7)]
    for name in names:
        write_video(tmp_path / name, 12, codec="h264-mkv")
    paths = [str(tmp_path / n) for n in names] + [str(tmp_path / "x.png")]
    Image.fromarray(index_frame(1)).save(tmp_path / "x.png")
    settings = Settings(model=tiny_video_model.parent, batch_size=16, frames=6)
    info = inspect_model(tiny_video_model.parent)
    image_runtime = load_runtime("onnxruntime", info)
    res = Resources(settings, info, Preprocess(), Verdict(), {"image": image_runtime})
    stage = video_stage(res)
    recording = Recording(res.runtimes["sequence"])
    maker = make_stages(PillowDecoder(Preprocess()), image_runtime, video=stage, sequence_runtime=recording,
                        batch_size=16, read_threads=2)
    try:
        batches = list(split(paths, 16, maker.cost))
        # 6 frames a video, 16 frames a batch: two videos per batch; the image rides with the last.
        assert [len(b) for b in batches] == [2, 2, 2, 2]
        rows = []
        for batch in batches:
            rows.extend(maker.run(batch).result)
    finally:
        maker.close()
        image_runtime.close()
    assert [r.path for r in rows] == paths and [r.kind for r in rows] == ["video"] * 7 + ["image"]
    assert all(r.status == "ok" for r in rows)
    assert recording.shapes and all(n * t <= 16 for n, t, *_ in recording.shapes)
    assert all(shape[1:] == (6, 3, 224, 224) for shape in recording.shapes)


# -- faces through time ------------------------------------------------------------------------

import re  # noqa: E402

FACE_FPS = 10
FACE_FRAMES = 24
STATIC_AT = (440, 170, 0.8)  # x, y, scale of the face that stays put


def _moving_x(i: int) -> int:
    return 20 + 10 * i  # the other face walks right, 10 px a frame


def _placements(i: int) -> list[tuple[int, int, float]]:
    return [(_moving_x(i), 20, 1.0), STATIC_AT]


def _face_video(path: Path) -> Path:
    """A 640x360 video of two astronaut faces on coffee: one still, one moving right across the frames."""
    return write_face_video(path, FACE_FRAMES, _placements, fps=FACE_FPS)


def _expected_boxes(frame_number: int) -> list[tuple[float, ...]]:
    return [face_box(*p) for p in _placements(frame_number)]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_faces_are_followed_through_time_and_the_most_suspicious_track_is_the_verdict(
    tmp_path, tiny_video_model, backend, request  # noqa: F811
):
    from tests.test_faces import iou

    db_url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    folder = tmp_path / "in"
    folder.mkdir()
    _face_video(folder / "two-faces.avi")
    write_video(folder / "no-face.mp4", 10, size=(128, 96))
    out = _cli("scan", str(folder), "--model", str(tiny_video_model.parent), "--db", db_url, "--faces", "on",
               "--frames", "6", "--threshold", "0", "--json")
    assert out.exit_code == 0, out.output
    scan_id = json.loads(out.output[out.output.index("{"):])["scan_id"]
    rows = {Path(r.path).name: r for r in _query(db_url, "SELECT * FROM scan_results")}
    assert rows["no-face.mp4"].status == "no-face" and rows["no-face.mp4"].kind == "video"
    row = rows["two-faces.avi"]
    assert (row.status, row.kind, row.frames, row.faces, row.faces_found) == ("ok", "video", 6, 2, 2)
    frames = _query(db_url, "SELECT * FROM scan_frames WHERE path LIKE '%two-faces.avi' "
                            "ORDER BY track, frame_index")
    tracks: dict[int, list] = {}
    for f in frames:
        tracks.setdefault(f.track, []).append(f)
    assert sorted(tracks) == [0, 1] and all(len(fs) == 6 for fs in tracks.values())
    # Each track is one face, followed through the six frames: the moving one's boxes move with it.
    moving = next(k for k, fs in tracks.items() if fs[-1].x - fs[0].x > 100)
    for k, fs in tracks.items():
        for f in fs:
            expected = _expected_boxes(int(round(f.timestamp_s * FACE_FPS)))[0 if k == moving else 1]
            assert iou((f.x, f.y, f.x + f.w, f.y + f.h), expected) >= 0.5, (k, f)
        assert len({f.track_p_fake for f in fs}) == 1 and all(f.p_fake is None for f in fs)
    # The video's verdict is its most suspicious track.
    track_p = {k: fs[0].track_p_fake for k, fs in tracks.items()}
    assert row.p_fake == pytest.approx(max(track_p.values()))
    # Two different sequences, not one score copied (a copy is the same float; the tiny model scores the same
    # face pasted twice a few 1e-7 apart, so no tolerance).
    assert track_p[0] != track_p[1]

    # The report shows the flagged track's frames with its face marked.
    report = tmp_path / "report.html"
    out = _cli("report", str(scan_id), "--db", db_url, "--out", str(report))
    assert out.exit_code == 0, out.output
    html = report.read_text(encoding="utf-8")
    figure = re.search(r'<figure class="suspect video" data-path="[^"]*two-faces.avi">(.*?)</figure>', html, re.S)
    assert figure is not None
    drawn = [tuple(int(v) for v in m.split(",")) for m in re.findall(r'data-box="([^"]+)"', figure.group(1))]
    flagged = max(track_p, key=track_p.get)
    assert drawn == [(f.x, f.y, f.w, f.h) for f in tracks[flagged]]
    assert len(re.findall(r"data:image/jpeg;base64,", figure.group(1))) == 6


# -- the fleet: Celery workers score videos through the same score_chunk ------------------------


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_celery_workers_score_a_mixed_folder_one_row_per_file(tmp_path, tiny_video_model, redis_server,  # noqa: F811
                                                               pg_url):
    from tests._cluster import Worker, wait_for

    folder = tmp_path / "in"
    folder.mkdir()
    write_video(folder / "a.mp4", 30)
    write_video(folder / "b.webm", 12, codec="vp9-webm")
    write_audio_only(folder / "song.mov")
    Image.fromarray(index_frame(5)).save(folder / "c.png")
    expected = {"a.mp4": ("video", "ok"), "b.webm": ("video", "ok"), "song.mov": ("video", "error"),
                "c.png": ("image", "ok")}
    engine = db.make_engine(pg_url)
    db.upgrade(engine)
    engine.dispose()
    (tmp_path / "logs").mkdir()
    worker = Worker(redis_server.url(), pg_url, tmp_path / "logs", name="video")
    try:
        worker.wait_ready()
        out = _cli("scan", str(folder), "--model", str(tiny_video_model.parent), "--db", pg_url, "--broker",
                   redis_server.url(), "--chunk-size", "3", "--json")
        assert out.exit_code == 0, out.output
        scan_id = json.loads(out.stdout)["scan_id"]
        wait_for(lambda: _query(pg_url, "SELECT status FROM scans WHERE id = :s", s=scan_id)[0].status != "running",
                 120, "the fleet scan to complete", interval=0.5)
        rows = _query(pg_url, "SELECT * FROM scan_results WHERE scan_id = :s", s=scan_id)
        assert sorted(Path(r.path).name for r in rows) == sorted(expected), worker.log()[-3000:]
        for r in rows:
            assert (r.kind, r.status) == expected[Path(r.path).name], (r.path, r.error)
        assert {r.frames for r in rows if r.kind == "video" and r.status == "ok"} == {4}
        frames = _query(pg_url, "SELECT COUNT(*) AS n FROM scan_frames WHERE scan_id = :s", s=scan_id)
        assert frames[0].n == 8
    finally:
        worker.stop()


# -- settings and the walker -------------------------------------------------------------------


def test_video_settings_come_from_options_and_the_environment(tmp_path, tiny_video_model, sqlite_url):  # noqa: F811
    from dfscan.core.settings import DEFAULT_VIDEO_EXTENSIONS, Settings, SettingsError, from_env

    assert Settings().scan_extensions[-len(DEFAULT_VIDEO_EXTENSIONS):] == DEFAULT_VIDEO_EXTENSIONS
    assert set(DEFAULT_VIDEO_EXTENSIONS) == {".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi"}
    env = {"DFSCAN_VIDEO_EXTENSIONS": "MP4,webm", "DFSCAN_FRAMES": "8", "DFSCAN_VIDEO_TIME_LIMIT_S": "5"}
    s = from_env(env)
    assert (s.video_extensions, s.frames, s.video_time_limit_s) == ((".mp4", ".webm"), 8, 5.0)
    assert from_env({"DFSCAN_VIDEO_EXTENSIONS": "none"}).video_extensions == ()
    with pytest.raises(SettingsError, match="frames per video"):
        Settings(frames=0)
    with pytest.raises(SettingsError, match="both image and video"):
        Settings(video_extensions=(".mp4", ".png"))

    folder = tmp_path / "in"
    folder.mkdir()
    write_video(folder / "a.mp4", 10)
    write_video(folder / "b.mkv", 10, codec="h264-mkv")
    Image.fromarray(index_frame(2)).save(folder / "c.png")
    # Only .mkv taken as video; .mp4 is not walked.
    out = _cli("scan", str(folder), "--model", str(tiny_video_model.parent), "--db", sqlite_url,
               "--video-extensions", "mkv", "--frames", "3")
    assert out.exit_code == 0, out.output
    rows = _query(sqlite_url, "SELECT path, kind, frames FROM scan_results ORDER BY path")
    assert [(Path(r.path).name, r.kind, r.frames) for r in rows] == [("b.mkv", "video", 3), ("c.png", "image", None)]
    # Videos off: images only.
    out = CliRunner().invoke(main, ["scan", str(folder), "--model", str(tiny_video_model.parent), "--db", sqlite_url,
                                    "--json"], env={"DFSCAN_VIDEO_EXTENSIONS": "none"})
    assert out.exit_code == 0, out.output
    assert json.loads(out.output[out.output.index("{"):])["total"] == 1
    out = CliRunner().invoke(main, ["scan", str(folder), "--model", str(tiny_video_model.parent), "--db", sqlite_url,
                                    "--frames", "0"])
    assert out.exit_code == 2 and "--frames" in out.output


def test_videos_are_opened_by_the_decoder_never_read_into_memory(tmp_path, tiny_video_model):  # noqa: F811
    """A video larger than the reader's limits is scored; an image of the same size is refused by them."""
    from dfscan.core.settings import Settings
    from dfscan.trt import load_runtime
    from dfscan.trt.model_info import inspect_model
    from dfscan.workers.images.decode import PillowDecoder, Preprocess
    from dfscan.workers.scoring import Resources, Verdict
    from dfscan.workers.scoring.video_stage import video_stage
    from tests._stages import stages as make_stages

    rng = np.random.default_rng(0)
    video = write_video(tmp_path / "big.mkv", 20, codec="h264-mkv", size=(128, 96),
                        draw=lambda i: rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    image = tmp_path / "big.png"
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(image)
    limit = 4096
    assert video.stat().st_size > 10 * limit and image.stat().st_size > limit
    info = inspect_model(tiny_video_model.parent)
    runtime = load_runtime("onnxruntime", info)
    res = Resources(Settings(model=tiny_video_model.parent, frames=4), info, Preprocess(), Verdict(), {"image": runtime})
    stage = video_stage(res)
    maker = make_stages(PillowDecoder(Preprocess()), runtime, video=stage, sequence_runtime=res.runtimes["sequence"],
                        read_threads=2, max_file_bytes=limit, budget_bytes=limit)
    try:
        rows = maker.run([str(video), str(image)]).result
    finally:
        maker.close()
        res.close()
    assert [(r.kind, r.status, r.error_code) for r in rows] == [("video", "ok", None), ("image", "error", "too-large")]
    assert rows[0].size == video.stat().st_size and rows[0].frames == 4
