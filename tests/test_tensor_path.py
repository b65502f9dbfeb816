"""Device-resident batches (--batches device) on the CPU: torch CPU tensors stand in for CUDA.

The tensor path must score images, faces and videos like the host (NumPy)
path: the same boxes and squares, model inputs within a grey level of the
host's (exactly equal where both resize the same way), p_fake within 1e-4,
and a scan with ``--batches device --runtime torch`` writes the rows
``--batches host`` writes.  Real parts: Pillow and DALI's CPU decoders, the
MTCNN weights from facenet-pytorch's wheel, the tiny detector's ``.pt2``
through the torch runtime, PyAV videos, SQLite through the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import text

import torch

from dfscan import db
from dfscan.cli import main
from dfscan.trt.model_info import inspect_model
from dfscan.trt.pytorch import TorchRuntime
from dfscan.workers.faces import FaceOptions, create_face_detector
from dfscan.workers.faces.crops import resize_region
from dfscan.workers.images import DECODERS, Preprocess, create_decoder
from dfscan.workers.images.tensors import DeviceDecoder
from dfscan.core.settings import Settings
from dfscan.workers.scoring import Verdict
from dfscan.workers.scoring.context import Resources
from dfscan.workers.scoring.face_stage import FaceDecoder
from dfscan.workers.scoring.stages import STAGES
from dfscan.workers.scoring.tensors import DeviceFaceDecoder, DeviceVideoStage, batch_device
from dfscan.workers.scoring.video_stage import VideoOptions, VideoStage
from tests._images import write_jpegs
from tests._models import tiny_onnx_model  # noqa: F401 - fixture
from tests._stages import stages
from tests._videos import write_face_video, write_video

skimage_data = pytest.importorskip("skimage.data")

DALI_OK = DECODERS["dali-cpu"].available()[0]
DALI_GPU_OK, DALI_GPU_WHY = DECODERS["dali-gpu"].available()
DECODER_NAMES = ["pillow", pytest.param("dali-cpu", marks=pytest.mark.skipif(not DALI_OK, reason="DALI not installed")),
                 pytest.param("dali-gpu", marks=pytest.mark.skipif(not DALI_GPU_OK, reason=DALI_GPU_WHY or "no GPU"))]
# Torch CPU tensors stand in for CUDA here; on a GPU host the CUDA path runs as well (tests/bench/gpu_check.sh).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="needs torch on a CUDA GPU"))]
P_FAKE_TOL = 1e-4
# One grey level in the model's normalised units (the smallest std).
ONE_LEVEL = 1.0 / (255.0 * min(Preprocess().std)) + 1e-5


@pytest.fixture(scope="module")
def runtime(tiny_onnx_model):  # noqa: F811
    rt = TorchRuntime(inspect_model(tiny_onnx_model), device="cpu")
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def detector():
    return create_face_detector("mtcnn", "cpu")


def _host(x) -> np.ndarray:
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _compare_rows(host_rows, device_rows) -> None:
    assert len(host_rows) == len(device_rows)
    for h, d in zip(host_rows, device_rows):
        assert (d.path, d.status, d.label, d.error, d.faces, d.faces_found, d.kind) == \
               (h.path, h.status, h.label, h.error, h.faces, h.faces_found, h.kind), h.path
        if h.p_fake is None:
            assert d.p_fake is None
        else:
            assert abs(d.p_fake - h.p_fake) <= P_FAKE_TOL, (h.path, h.p_fake, d.p_fake)
        assert [(f.index, f.x, f.y, f.w, f.h, f.detector_score, f.label) for f in d.face_rows] == \
               [(f.index, f.x, f.y, f.w, f.h, f.detector_score, f.label) for f in h.face_rows]
        assert [(f.track, f.frame_index, f.timestamp_s, f.x, f.y, f.w, f.h) for f in d.frame_rows] == \
               [(f.track, f.frame_index, f.timestamp_s, f.x, f.y, f.w, f.h) for f in h.frame_rows]


# -- the resampling that cuts crops on the device -------------------------------------------------


def test_device_resize_is_pillows_bilinear_within_a_grey_level() -> None:
    rng = np.random.default_rng(7)
    exact = 0
    for trial in range(24):
        h, w = (int(v) for v in rng.integers(16, 200, size=2))
        im = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        side = int(rng.integers(1, min(h, w) + 1))
        x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        box = (x0, y0, x0 + side, y0 + side) if trial % 4 else (0, 0, w, h)
        size = (int(rng.integers(8, 160)), int(rng.integers(8, 160)))
        ref = np.asarray(Image.fromarray(im).resize((size[1], size[0]), Image.Resampling.BILINEAR, box=box))
        ours = resize_region(torch.from_numpy(im), box, size).permute(1, 2, 0).numpy()
        diff = np.abs(ours - ref.astype(np.float64))
        assert diff.max() <= 1.0, (box, size)  # Pillow 13 runs the vertical pass first for some shapes
        assert diff.mean() < 0.3, (box, size)
        exact += int(diff.max() == 0)
    assert exact >= 6  # the horizontal-first shapes are byte for byte Pillow's


# -- images -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("decoder", DECODER_NAMES)
def test_images_score_like_the_host_path(tmp_path: Path, runtime, decoder: str, device: str) -> None:
    folder = tmp_path / "in"
    paths = write_jpegs(folder, 5, size=(300, 200)) + write_jpegs(folder, 2, size=(224, 224), start=5)
    Image.fromarray(skimage_data.astronaut()).save(folder / "astronaut.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    paths += [folder / "astronaut.png", folder / "broken.jpg"]
    pre = Preprocess()
    host = stages(create_decoder(decoder, pre), runtime, batch_size=4).run([str(p) for p in paths])
    on_device = stages(DeviceDecoder(create_decoder(decoder, pre), device), runtime, batch_size=4).run(
        [str(p) for p in paths])
    _compare_rows(host.result, on_device.result)
    assert [r.status for r in on_device.result].count("ok") == len(paths) - 1
    for h, d in zip(host.items, on_device.items):
        if h.payload is None:
            assert d.payload is None and d.error.code == h.error.code
            continue
        tensor = d.payload.tensor
        assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32 and tensor.device.type == device
        # The same pixels, normalised by the same float32 arithmetic: equal.
        np.testing.assert_array_equal(_host(d.payload.tensor), h.payload.tensor)


# -- faces ------------------------------------------------------------------------------------------


def _face_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    Image.fromarray(skimage_data.astronaut()).save(folder / "astronaut.png")
    Image.fromarray(skimage_data.chelsea()).save(folder / "chelsea.jpg", quality=92)
    background = Image.fromarray(skimage_data.coffee()).resize((1200, 800))
    face = Image.fromarray(skimage_data.astronaut()).crop((150, 30, 300, 200))
    for x, y, s in [(40, 60, 1.0), (400, 300, 1.6), (800, 80, 2.2)]:
        background.paste(face.resize((round(150 * s), round(170 * s))), (x, y))
    background.save(folder / "group.jpg", quality=95)
    return [folder / "astronaut.png", folder / "chelsea.jpg", folder / "group.jpg"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("decoder", DECODER_NAMES)
def test_faces_score_like_the_host_path(tmp_path: Path, runtime, detector, decoder: str, device: str) -> None:
    paths = [str(p) for p in _face_images(tmp_path / "in")]
    pre, options = Preprocess(), FaceOptions()
    host_faces = FaceDecoder(create_decoder(decoder, pre), pre, options, detector, threads=1)
    device_faces = DeviceFaceDecoder(DeviceDecoder(create_decoder(decoder, pre), device), host_faces, threads=1)
    host = stages(host_faces, runtime).run(paths)
    on_device = stages(device_faces, runtime).run(paths)
    _compare_rows(host.result, on_device.result)
    assert [(r.status, r.faces) for r in on_device.result] == [("ok", 1), ("no-face", 0), ("ok", 3)]
    for h, d in zip(host.items, on_device.items):
        assert d.payload.faces == h.payload.faces and d.payload.crops == h.payload.crops  # boxes, squares
        if h.payload.tensors is None:
            continue
        assert isinstance(d.payload.tensors, torch.Tensor) and d.payload.tensors.device.type == device
        diff = np.abs(_host(d.payload.tensors) - h.payload.tensors)
        assert diff.max() <= ONE_LEVEL and diff.mean() < 0.3 * ONE_LEVEL, (h.path, diff.max(), diff.mean())


# -- videos -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("faces", [False, True], ids=["whole-frames", "faces"])
def test_videos_score_like_the_host_path(tmp_path: Path, runtime, detector, faces: bool, device: str) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    paths = [str(write_face_video(folder / "faces.avi", 8, lambda i: [(40 + 10 * i, 40, 1.0)], size=(320, 240))),
             str(write_video(folder / "plain.mp4", 8, size=(96, 64)))]
    pre = Preprocess()
    finder = FaceDecoder(None, pre, FaceOptions(), detector).finder if faces else None
    host_stage = VideoStage(pre, VideoOptions(frames=4), faces=finder, threads=1)
    device_stage = DeviceVideoStage.from_stage(VideoStage(pre, VideoOptions(frames=4), faces=finder, threads=1), device)
    host = stages(create_decoder("pillow", pre), runtime, video=host_stage).run(paths)
    on_device = stages(create_decoder("pillow", pre), runtime, video=device_stage).run(paths)
    _compare_rows(host.result, on_device.result)
    assert on_device.result[0].status == "ok" and on_device.result[1].status == ("no-face" if faces else "ok")
    for h, d in zip(host.items, on_device.items):
        assert len(d.payload.tracks) == len(h.payload.tracks)
        for ht, dt in zip(h.payload.tracks, d.payload.tracks):
            assert dt.boxes == ht.boxes and isinstance(dt.crops, torch.Tensor) and dt.crops.device.type == device
            diff = np.abs(_host(dt.crops).astype(np.int16) - ht.crops.astype(np.int16))
            assert diff.max() <= 1 and diff.mean() < 0.3
        for hi, di in zip(h.payload.inputs(), d.payload.inputs()):
            assert isinstance(di.array, torch.Tensor) and di.array.shape == hi.array.shape


# -- the setting and the scan -----------------------------------------------------------------------


def test_the_setting_picks_the_stages(tiny_onnx_model: Path, runtime, detector) -> None:  # noqa: F811
    assert batch_device("auto", runtime) is None  # torch on the CPU: the host path
    assert batch_device("host", runtime) is None
    assert batch_device("device", runtime) == "cpu"

    class Gpu:
        name, device = "tensorrt", "gpu"

    assert batch_device("auto", Gpu()) == "cuda"
    # The scan's stage table makes the device stages with --batches device, the host ones otherwise.
    info = inspect_model(tiny_onnx_model)
    table = {entry.name: entry for entry in STAGES}
    for mode, faces, want in (("device", "off", DeviceDecoder), ("device", "on", DeviceFaceDecoder),
                              ("host", "off", type(create_decoder("pillow", Preprocess())))):
        settings = Settings(batches=mode, faces=faces, decoder="pillow", video_extensions=() if faces == "on" else
                            Settings().video_extensions)
        # Faces on: the host face decoder made with the module's detector (loading MTCNN again costs seconds).
        host_faces = FaceDecoder(create_decoder("pillow", Preprocess()), Preprocess(), FaceOptions(), detector,
                                 threads=1) if faces == "on" else None
        made = {"_decoder": host_faces, "_faces": host_faces} if host_faces is not None else {}
        res = Resources(settings, info, Preprocess(), Verdict(), {"image": runtime}, **made)
        images, video = table["images"].make(res), table["video"].make(res)
        try:
            assert type(images.decoder) is want
            assert video is None or isinstance(video, DeviceVideoStage) == (mode == "device")
        finally:
            images.close()
            if video is not None:
                video.close()
            if "sequence" in res.runtimes:  # the video graph's runtime, loaded by the video stage
                res.runtimes.pop("sequence").close()


def _rows(db_url: str) -> dict:
    engine = db.make_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT path, status, label, p_fake, error, kind, faces FROM scan_results")).all()
    finally:
        engine.dispose()
    return {Path(r.path).name: r for r in rows}


def test_scan_with_device_batches_writes_the_host_rows(tmp_path: Path, tiny_onnx_model: Path) -> None:  # noqa: F811
    folder = tmp_path / "in"
    write_jpegs(folder, 6, size=(320, 240))
    Image.fromarray(skimage_data.astronaut()).save(folder / "astronaut.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    write_video(folder / "clip.mp4", 8, size=(96, 64))
    found = {}
    for mode in ("host", "device"):
        url = f"sqlite:///{tmp_path / mode}.db"
        out = CliRunner().invoke(main, ["scan", str(folder), "--model", str(tiny_onnx_model), "--db", url,
                                        "--runtime", "torch", "--batches", mode, "--decoder", "pillow",
                                        "--frames", "4", "--batch-size", "4", "--json"], catch_exceptions=False)
        assert out.exit_code == 0, out.output
        summary = json.loads(out.output[out.output.index("{"):])
        assert summary["errors"] == 1
        found[mode] = _rows(url)
    assert set(found["device"]) == set(found["host"]) and len(found["host"]) == 9
    for name, h in found["host"].items():
        d = found["device"][name]
        assert (d.status, d.label, d.error, d.kind) == (h.status, h.label, h.error, h.kind), name
        assert (h.p_fake is None and d.p_fake is None) or abs(d.p_fake - h.p_fake) <= P_FAKE_TOL, name


def test_device_batches_need_a_runtime_that_takes_them(tmp_path: Path, tiny_onnx_model: Path) -> None:  # noqa: F811
    write_jpegs(tmp_path / "in", 1)
    out = CliRunner().invoke(main, ["scan", str(tmp_path / "in"), "--model", str(tiny_onnx_model),
                                    "--db", f"sqlite:///{tmp_path}/x.db", "--runtime", "onnxruntime",
                                    "--batches", "device"])
    assert out.exit_code != 0
    assert "--batches device needs --runtime torch or tensorrt" in out.output
    assert "Traceback" not in out.output
    out = CliRunner().invoke(main, ["scan", str(tmp_path / "in"), "--model", str(tiny_onnx_model),
                                    "--db", f"sqlite:///{tmp_path}/x.db", "--batches", "sideways"])
    assert out.exit_code == 2 and "sideways" in out.output
    for command in ("worker", "serve"):
        assert "--batches [auto|host|device]" in CliRunner().invoke(main, [command, "--help"]).output
