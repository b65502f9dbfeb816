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

from dfscan.workers.errors import REASONS, ImageError, VideoError
from dfscan.workers.video import sample_video
from tests._videos import (
    CODECS,
    corrupt_packets,
    index_frame,
    read_index,
    tkhd_matrix,
    truncate_without_moov,
    write_audio_only,
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
