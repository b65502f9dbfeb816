"""DALI's video decoder against the PyAV sampler: the same frames (by the index drawn in them), nearly the same pixels.

DALI's CPU backend (VP8, VP9, MJPEG) runs here; the ``mixed`` backend (NVDEC: H.264, HEVC, ...) needs a GPU.
"""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from dfscan.workers.reading.errors import ImageError
from dfscan.workers.video.sample import SampledVideo, sample_video
from tests._videos import CODECS, Codec, read_index, write_video

dali_ok, dali_why = __import__("dfscan.workers.images.dali", fromlist=["dali_status"]).dali_status()
pytestmark = pytest.mark.skipif(not dali_ok, reason=f"DALI unavailable: {dali_why}")

# MJPEG in a QuickTime file: the one container with a display matrix whose codec DALI's CPU backend decodes.
MJPEG_MOV = Codec("mjpeg", ".mov", "yuvj420p", {})
MAX_MEAN_ABS_DIFF = 1.0  # grey levels, over all pixels of all frames: YUV->RGB conversions differ slightly


@pytest.fixture(autouse=True, scope="module")
def _mjpeg_mov():
    CODECS["mjpeg-mov"] = MJPEG_MOV
    yield
    CODECS.pop("mjpeg-mov", None)


def _sampler(device: str = "cpu", **kw):
    """DALI's sampler; on the CPU with MJPEG allowed (clean files only here: see ``_dali_video``'s docstring)."""
    from dfscan.workers.video.dali import DALI_VIDEO_CODECS, DaliVideoSampler

    if device == "cpu":
        kw.setdefault("codecs", DALI_VIDEO_CODECS["cpu"] | {"mjpeg"})
    return DaliVideoSampler(device=device, **kw)


def _assert_parity(path: Path, frames: int, dali: SampledVideo) -> float:
    ref = sample_video(str(path), frames, time_limit_s=30)
    assert [read_index(f) for f in dali.frames] == [read_index(f) for f in ref.frames], "not the same frames"
    assert dali.indices == ref.indices and dali.rotation == ref.rotation
    assert (dali.width, dali.height) == (ref.width, ref.height) and dali.requested == ref.requested
    np.testing.assert_allclose(dali.timestamps_s, ref.timestamps_s, atol=1e-6)
    assert dali.duration_s == pytest.approx(ref.duration_s)
    assert [f.shape for f in dali.frames] == [f.shape for f in ref.frames]
    mad = float(np.mean([np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() for a, b in zip(dali.frames, ref.frames)]))
    assert mad < MAX_MEAN_ABS_DIFF, f"{path.name}: mean |DALI - PyAV| {mad:.3f} grey levels"
    return mad


CPU_CASES = {
    "vp9-webm": dict(codec="vp9-webm", count=40),
    "mjpeg-avi": dict(codec="mjpeg-avi", count=40),
    "mjpeg-mov-rotated": dict(codec="mjpeg-mov", count=30, rotation=-90),
    "vp9-webm-gop": dict(codec="vp9-webm", count=90, gop=30),
    "vp9-webm-vfr": dict(codec="vp9-webm", count=24, pts=[0, 1, 2, 5, 9, 10, 11, 30, 31, 32, 40, 41, 60, 61, 62, 63,
                                                         64, 80, 81, 82, 90, 95, 99, 100],
                         time_base=Fraction(1, 20)),
    "mjpeg-avi-shorter-than-t": dict(codec="mjpeg-avi", count=5),
}


@pytest.mark.parametrize("case", sorted(CPU_CASES))
def test_cpu_decoder_takes_the_same_frames_as_pyav(tmp_path: Path, case: str) -> None:
    spec = dict(CPU_CASES[case])
    codec, count = spec.pop("codec"), spec.pop("count")
    path = write_video(tmp_path / f"{case}{CODECS[codec].suffix}", count, codec=codec, size=(64, 48), **spec)
    sampler = _sampler()
    (got,) = sampler.sample_batch([str(path)], 16)
    assert isinstance(got, SampledVideo), got
    assert sampler.stats["dali"] == 1 and sampler.stats["pyav"] == 0  # DALI decoded it, not the fallback
    _assert_parity(path, 16, got)


def test_a_batch_of_mixed_codecs_and_bad_files(tmp_path: Path) -> None:
    """H.264 goes to PyAV on the CPU backend; bad files get the sampler's reasons; the rest is DALI's, in order."""
    paths = [
        write_video(tmp_path / "a.webm", 20, codec="vp9-webm"),
        write_video(tmp_path / "b.mp4", 20, codec="h264-mp4"),
        tmp_path / "empty.webm",
        tmp_path / "still.avi",
        write_video(tmp_path / "c.avi", 12, codec="mjpeg-avi"),
    ]
    paths[2].write_bytes(b"")
    paths[3].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    sampler = _sampler(batch_size=4)
    out = sampler.sample_batch([str(p) for p in paths], 8)
    assert len(out) == 5
    assert isinstance(out[2], ImageError) and out[2].code == "empty"
    assert isinstance(out[3], ImageError) and out[3].code == "not-video"
    for i in (0, 1, 4):
        assert isinstance(out[i], SampledVideo)
        _assert_parity(paths[i], 8, out[i])
    assert out[1].codec == "h264" and sampler.stats["pyav"] == 3 and sampler.stats["dali"] == 2  # h264, empty, still


def _garble(path: Path, seed: int, size: tuple[int, int] = (128, 96)) -> Path:
    """Noise over six spans of 100 bytes in the last 80 % of the file: the container still opens."""
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for _ in range(6):
        i = int(rng.integers(len(data) // 5, len(data) - 300))
        data[i : i + 100] = rng.integers(0, 256, 100, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def test_a_file_dali_fails_on_is_sampled_by_pyav_and_the_batch_survives(tmp_path: Path) -> None:
    good = [write_video(tmp_path / f"g{i}.avi", 20, codec="mjpeg-avi") for i in range(3)]
    bad = _garble(write_video(tmp_path / "bad.avi", 40, codec="mjpeg-avi", size=(128, 96)), seed=1)
    sampler = _sampler(batch_size=4)
    out = sampler.sample_batch([str(good[0]), str(bad), str(good[1]), str(good[2])], 8)
    # DALI failed the batch; bisection found the file, the pipeline was rebuilt, the others kept DALI's frames.
    assert sampler.stats["failed_runs"] >= 2 and sampler.stats["dali_failed"] == 1
    assert sampler.stats["dali"] == 3 and sampler.stats["pyav"] == 1 and sampler.stats["builds"] >= 2
    for i, path in ((0, good[0]), (2, good[1]), (3, good[2])):
        assert isinstance(out[i], SampledVideo)
        _assert_parity(path, 8, out[i])
    # The garbled file is PyAV's answer: here it still decodes the sampled frames.
    ref = sample_video(str(bad), 8, time_limit_s=30)
    assert isinstance(out[1], SampledVideo) and out[1].indices == ref.indices
    assert all(np.array_equal(a, b) for a, b in zip(out[1].frames, ref.frames))


def test_a_file_whose_plan_fails_gets_pyavs_reason(tmp_path: Path) -> None:
    bad = _garble(write_video(tmp_path / "bad.webm", 40, codec="vp9-webm", size=(128, 96)), seed=6)
    (got,) = _sampler().sample_batch([str(bad)], 8)
    with pytest.raises(ImageError) as ref:
        sample_video(str(bad), 8, time_limit_s=30)
    assert isinstance(got, ImageError) and (got.code, got.message) == (ref.value.code, ref.value.message)


def _noisy_scans(path: Path) -> Path:
    """Noise over the first 180 bytes of scan data after every JPEG SOS marker of an MJPEG file."""
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    i = data.find(b"\xff\xda")
    while i >= 0:
        data[i + 20 : i + 200] = rng.integers(0, 256, 180, dtype=np.uint8).tobytes()
        i = data.find(b"\xff\xda", i + 200)
    path.write_bytes(bytes(data))
    return path


_SAMPLE_IN_A_CHILD = """
import sys
from dfscan.workers.video.dali import DaliVideoSampler
(out,) = DaliVideoSampler(device=sys.argv[2], codecs=frozenset({"mjpeg"})).sample_batch([sys.argv[1]], 8)
print(type(out).__name__, getattr(out, "code", ""))
"""


def _sample_in_a_child(path: Path, device: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _SAMPLE_IN_A_CHILD, str(path), device], capture_output=True,
                          text=True, timeout=120)


def test_dali_cpu_crashes_on_noisy_mjpeg_scans_which_is_why_mjpeg_is_left_to_pyav(tmp_path: Path) -> None:
    """Pins DALI 2.4's crash (see ``_dali_video``): when this fails, DALI survives it and MJPEG may go back."""
    bad = _noisy_scans(write_video(tmp_path / "bad.avi", 20, codec="mjpeg-avi"))
    with pytest.raises(ImageError) as ref:  # PyAV, the reference, refuses it with a reason
        sample_video(str(bad), 8, time_limit_s=30)
    assert ref.value.code == "no-frames"
    child = _sample_in_a_child(bad, "cpu")
    assert child.returncode == -11, f"DALI's CPU video decoder no longer crashes here: {child.stdout}{child.stderr[-500:]}"


def test_mjpeg_is_left_to_pyav_on_the_cpu_backend(tmp_path: Path) -> None:
    from dfscan.workers.video.dali import DaliVideoSampler

    sampler = DaliVideoSampler(device="cpu")
    (got,) = sampler.sample_batch([str(write_video(tmp_path / "a.avi", 10, codec="mjpeg-avi"))], 4)
    assert isinstance(got, SampledVideo) and sampler.stats["pyav"] == 1 and sampler.stats["dali"] == 0


def test_files_over_the_size_limit_are_left_to_pyav(tmp_path: Path) -> None:
    path = write_video(tmp_path / "a.webm", 20, codec="vp9-webm")
    sampler = _sampler(max_bytes=100)
    (got,) = sampler.sample_batch([str(path)], 4)
    assert isinstance(got, SampledVideo) and sampler.stats["pyav"] == 1 and sampler.stats["dali"] == 0


# -- GPU -------------------------------------------------------------------------------


@pytest.mark.gpu
def test_mixed_decoder_takes_the_same_frames_as_pyav(tmp_path: Path) -> None:
    from dfscan.workers.images.dali import dali_gpu_status

    ok, why = dali_gpu_status()
    if not ok:
        pytest.skip(f"DALI's mixed video decoder needs a GPU: {why}")
    from dfscan.detector.synth_video import synthesize_videos

    paths = [
        write_video(tmp_path / "a.mp4", 60, codec="h264-mp4", size=(128, 96)),
        write_video(tmp_path / "b.mp4", 90, codec="h264-mp4", gop=30, rotation=-90),
        write_video(tmp_path / "c.mkv", 40, codec="h264-mkv"),
        write_video(tmp_path / "d.webm", 40, codec="vp9-webm"),
        write_video(tmp_path / "e.avi", 40, codec="mjpeg-avi"),
    ]
    sampler = _sampler("gpu", batch_size=8)
    out = sampler.sample_batch([str(p) for p in paths], 16)
    mads = [_assert_parity(p, 16, s) for p, s in zip(paths, out)]
    assert sampler.stats["dali"] == len(paths) and sampler.stats["pyav"] == 0
    print(f"\nDALI mixed vs PyAV: mean |delta| per video {', '.join(f'{m:.3f}' for m in mads)} grey levels")

    # The MJPEG file that crashes DALI's CPU backend: the mixed one must survive it (MJPEG is in its table).
    bad = _noisy_scans(write_video(tmp_path / "bad.avi", 20, codec="mjpeg-avi"))
    child = _sample_in_a_child(bad, "gpu")
    assert child.returncode == 0, f"DALI mixed crashed on noisy MJPEG scans: {child.stderr[-500:]}"
    assert child.stdout.split()[0] in ("SampledVideo", "VideoError")

    # H.264 with B-frames (x264 veryfast): DALI numbers frames in presentation order, as the plan does.
    synthesize_videos(tmp_path / "synth", 2, size=64, frames=20, layout="flat")
    clips = sorted((tmp_path / "synth").rglob("*.mp4"))
    for clip, got in zip(clips, _sampler("gpu").sample_batch([str(c) for c in clips], 8)):
        ref = sample_video(str(clip), 8, time_limit_s=30)
        assert got.indices == ref.indices
        mad = np.mean([np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() for a, b in zip(got.frames, ref.frames)])
        assert mad < MAX_MEAN_ABS_DIFF


# -- the scan: DALI's video decoder follows the scan's DALI image decoder ------------------------------

import json  # noqa: E402

from click.testing import CliRunner  # noqa: E402
from sqlalchemy import text  # noqa: E402

from dfscan import db  # noqa: E402
from dfscan.cli import main  # noqa: E402
from tests._models import linear_probe_onnx_model  # noqa: E402,F401 - fixture
from tests._videos import truncate_without_moov  # noqa: E402


def _three_videos(folder: Path) -> list[Path]:
    """A VP9 WebM (DALI's CPU backend), an H.264 MP4 (PyAV's there), and a broken MP4 (no moov)."""
    folder.mkdir(parents=True)
    # Each frame draws its index (smooth areas: pixel noise would measure chroma upsampling, which differs).
    return [
        write_video(folder / "a.webm", 24, codec="vp9-webm"),
        write_video(folder / "b.mp4", 24, codec="h264-mp4"),
        truncate_without_moov(write_video(folder / "c.mp4", 24, codec="h264-mp4")),
    ]


def _scan(folder: Path, model: Path, db_url: str, decoder: str) -> tuple[dict[str, tuple], dict]:
    """name -> (status, error_code, p_fake, frames) of each row, and the worker's video record."""
    out = CliRunner().invoke(main, ["scan", str(folder), "--model", str(model), "--db", db_url, "--decoder", decoder,
                                    "--frames", "6", "--json", "--no-progress"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    scan_id = json.loads(out.output[out.output.index("{"):])["scan_id"]
    engine = db.make_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT v.path, v.status, r.error_code, v.p_fake, v.frames FROM scan_results AS v "
                                     "JOIN results AS r ON r.scan_id = v.scan_id AND r.path = v.path "
                                     "WHERE v.scan_id = :s"), {"s": scan_id}).all()
            (info,) = conn.execute(text("SELECT info FROM scan_workers WHERE scan_id = :s"), {"s": scan_id}).scalars()
    finally:
        engine.dispose()
    info = json.loads(info) if isinstance(info, str) else info
    return {Path(r.path).name: (r.status, r.error_code, r.p_fake, r.frames) for r in rows}, info["video"]


def test_a_dali_cpu_scan_samples_webm_with_dali_and_scores_as_pyav_does(tmp_path, linear_probe_onnx_model,  # noqa: F811
                                                                       sqlite_url):
    folder = tmp_path / "in"
    _three_videos(folder)
    dali, dali_record = _scan(folder, linear_probe_onnx_model, sqlite_url, "dali-cpu")
    pyav, pyav_record = _scan(folder, linear_probe_onnx_model, sqlite_url, "pillow")
    assert dali_record["decoder"].startswith("dali-video-cpu (DALI ") and dali_record["fallback"].startswith("PyAV ")
    assert pyav_record["decoder"].startswith("PyAV ") and pyav_record["fallback"] is None
    # One row per file, the broken one with its reason; the linear probe's p_fake moves with every pixel.
    assert set(dali) == set(pyav) == {"a.webm", "b.mp4", "c.mp4"}
    assert dali["c.mp4"][:2] == pyav["c.mp4"][:2] == ("error", "truncated")
    for name in ("a.webm", "b.mp4"):
        assert dali[name][0] == pyav[name][0] == "ok" and dali[name][3] == pyav[name][3] == 6
        assert dali[name][2] == pytest.approx(pyav[name][2], abs=0.005), name
    print(f"\np_fake DALI cpu / PyAV: a.webm {dali['a.webm'][2]:.4f} / {pyav['a.webm'][2]:.4f}")


def test_the_stage_hands_webm_to_dali_and_the_rest_to_pyav(tmp_path, linear_probe_onnx_model):  # noqa: F811
    """Which sampler took each file, by the sampler's counters (the scan above can't see them)."""
    from dfscan.core.settings import Settings
    from dfscan.trt.model_info import inspect_model
    from dfscan.workers.images.decode import Preprocess
    from dfscan.workers.scoring import Batch, Resources, Verdict
    from dfscan.workers.scoring.video_stage import video_stage

    def stage_for(settings):
        return video_stage(Resources(settings, info, Preprocess(), Verdict(), {}))

    paths = _three_videos(tmp_path / "in")
    gone = tmp_path / "in" / "gone.webm"  # vanished since it was listed: PyAV says so
    info = inspect_model(linear_probe_onnx_model)
    stage = stage_for(Settings(model=linear_probe_onnx_model, decoder="dali-cpu", frames=4))
    try:
        batch = Batch.of([str(p) for p in paths] + [str(gone)])
        stage.run(batch)
        items = batch.items
        assert stage.sampler is not None and stage.sampler.device == "cpu"
        assert stage.sampler.stats["dali"] == 1 and stage.sampler.stats["pyav"] == 3  # the MP4s and the gone file
    finally:
        stage.close()
    assert [i for i, it in enumerate(items) if it.payload is not None] == [0, 1]
    assert {i: it.error.code for i, it in enumerate(items) if it.error is not None} == {2: "truncated", 3: "missing"}
    assert [it.size for it in items[:3]] == [p.stat().st_size for p in paths] and items[3].size is None
    pillow = stage_for(Settings(model=linear_probe_onnx_model, decoder="pillow"))
    assert pillow.sampler is None
    pillow.close()


@pytest.mark.gpu
def test_a_dali_gpu_scan_samples_h264_with_nvdec(tmp_path, linear_probe_onnx_model, sqlite_url):  # noqa: F811
    from dfscan.workers.images.dali import dali_gpu_status

    ok, why = dali_gpu_status()
    if not ok:
        pytest.skip(f"DALI's mixed video decoder needs a GPU: {why}")
    folder = tmp_path / "in"
    _three_videos(folder)
    dali, record = _scan(folder, linear_probe_onnx_model, sqlite_url, "dali-gpu")
    pyav, _ = _scan(folder, linear_probe_onnx_model, sqlite_url, "pillow")
    assert record["decoder"].startswith("dali-video-gpu (DALI ")
    assert dali["c.mp4"][:2] == ("error", "truncated")
    for name in ("a.webm", "b.mp4"):
        assert dali[name][0] == "ok" and dali[name][2] == pytest.approx(pyav[name][2], abs=0.01), name


def test_a_pipeline_that_cannot_be_built_is_the_decoders_failure_not_each_videos(tmp_path):
    """No GPU here: the GPU pipeline can't be built, and that is said once, not bisected into per-video failures."""
    from dfscan.workers.images.dali import dali_gpu_status
    from dfscan.workers.reading.errors import DecoderUnavailable

    ok, _ = dali_gpu_status()
    if ok:
        pytest.skip("a GPU is here: the GPU pipeline builds")
    sampler = _sampler("gpu")
    clips = [str(write_video(tmp_path / f"{i}.webm", 12, codec="vp9-webm")) for i in range(3)]
    with pytest.raises(DecoderUnavailable, match="can't be built"):
        sampler.sample_batch(clips, 4)
    assert sampler.stats["failed_runs"] == 0 and sampler.stats["dali_failed"] == 0
