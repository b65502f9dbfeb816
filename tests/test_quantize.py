"""Static INT8 quantisation: the file, its sidecar, its agreement with FP32, and the scanner taking it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from dfscan.trt.model_info import inspect_model, sha256_file
from dfscan.cli import main
from tests._images import pattern, write_bad_files, write_jpegs
from tests._models import build_tiny_detector, tiny_onnx_model  # noqa: F401 - fixture
from dfscan.detector.quantize import QuantizeError, quantize_model


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("calib")
    write_jpegs(folder, 24)
    return folder


def _graded_images(folder: Path, n: int, start: int) -> list[int]:
    """Images whose brightness varies widely; the label is 1 for the brighter half."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = []
    for i in range(start, start + n):
        gain = 0.35 + ((i * 37) % 100) / 100
        arr = np.clip(np.asarray(pattern(i), dtype=np.float32) * gain, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img_{i:05d}.jpg", quality=90)
        labels.append(int(gain > 0.85))
    return labels


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A tiny detector whose p_fake spreads over (0, 1): its LSTM and head trained on image brightness.

    The seeded tiny model out of the box gives every image about the same
    p_fake, so any quantisation would "agree"; this one doesn't.
    Returns (FP32 model, training images, held-out images).
    """
    import torch

    from dfscan.detector.export import export_onnx
    from dfscan.detector.model import save_checkpoint
    from dfscan.workers.images.decode import Preprocess, decode_one

    root = tmp_path_factory.mktemp("trained")
    labels = _graded_images(root / "train", 48, 0)
    _graded_images(root / "check", 96, 1000)
    pre = Preprocess()
    x = torch.from_numpy(np.stack([decode_one(p.read_bytes(), pre) for p in sorted((root / "train").iterdir())]))
    y = torch.tensor(labels)
    torch.manual_seed(0)
    model = build_tiny_detector()
    with torch.no_grad():
        feats = model.backbone(x).unsqueeze(1)
    params = [*model.lstm.parameters(), *model.classifier.parameters()]
    opt = torch.optim.Adam(params, lr=2e-2)
    model.lstm.train()
    model.classifier.train()
    for _ in range(80):
        out, _ = model.lstm(feats)
        loss = torch.nn.functional.cross_entropy(model.classifier(out.mean(dim=1)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    checkpoint = save_checkpoint(root / "checkpoint" / "trained.pt", model, {"purpose": "tests: int8 agreement"})
    return export_onnx(checkpoint, root / "fp32").onnx_path, root / "train", root / "check"


def test_int8_model_has_its_own_sidecar_and_quantised_convolutions(tiny_onnx_model, calib_dir, tmp_path):
    out = tmp_path / "int8" / "model_int8.onnx"
    result = quantize_model(tiny_onnx_model, calib_dir, out)

    assert result.onnx_path == out and out.is_file()
    assert result.calibration_images == 24 and result.skipped_images == 0
    side = json.loads(result.info_path.read_text())
    fp32 = inspect_model(tiny_onnx_model)
    assert side["precision"] == "int8"
    assert side["sha256"] == sha256_file(out) != fp32.sha256
    assert side["quantization"]["source_sha256"] == fp32.sha256
    assert side["quantization"]["calibration_images"] == 24
    # The original's fields come along.
    for key in ("architecture", "classes", "mean", "std", "threshold", "temperature"):
        assert side[key] == json.loads(json.dumps(getattr(fp32, key))), key
    assert side["backbone"] == "tiny" and side["checkpoint"] == fp32.extra["checkpoint"]
    assert side["agreement"]["images"] == 24

    # All five convolutions run on INT8 inputs, with per-channel weight scales; the LSTM and head stay float.
    assert result.quantized_nodes["Conv"] == 5
    assert "Gemm" not in result.quantized_nodes and "LSTM" not in result.quantized_nodes
    assert side["quantization"]["float_nodes"] > 0
    graph = onnx.load(out).graph
    inits = {i.name: i for i in graph.initializer}
    weight_dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
                 and inits[n.input[0]].data_type == onnx.TensorProto.INT8]  # fmt: skip
    assert weight_dq
    assert any(len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1 for n in weight_dq)

    info = inspect_model(out)
    assert info.extra["precision"] == "int8"
    from dfscan.trt.onnxruntime import OnnxRuntime

    runtime = OnnxRuntime(info)
    assert runtime.precision == "int8"
    runtime.close()
    # The FP32 model and its sidecar are untouched.
    assert inspect_model(tiny_onnx_model).sha256 == fp32.sha256


def test_int8_agrees_with_fp32_on_a_model_with_spread_outputs(trained_tiny, tmp_path):
    model, train, check = trained_tiny
    result = quantize_model(model, train, tmp_path / "model_int8.onnx", check=check)
    a = result.agreement
    assert a.images == 96
    # Not degenerate: both verdicts occur and p_fake covers most of (0, 1).
    assert 0.2 < a.fp32_fake_share < 0.8 and a.fp32_p_fake_std > 0.2
    # A verdict can only flip where |p_fake - threshold| < |dp_fake|: with dp_fake under 0.1 no
    # confident verdict flips, and at most a couple of borderline ones among 96 may.  (The >= 99% figure
    # on a larger held-out set is tests/bench/bench_int8.py's, recorded in docs/benchmarks.md.)
    assert a.max_abs_dp_fake < 0.1, a
    assert a.identical_share >= 0.97, a


def test_scanner_scores_with_the_int8_model(tiny_onnx_model, calib_dir, tmp_path, sqlite_url):
    from dfscan import db
    from dfscan.core.settings import Settings
    from dfscan.scanner import ScanSource, WalkOptions
    from dfscan.workers.scoring.local import LocalScan

    out = quantize_model(tiny_onnx_model, calib_dir, tmp_path / "q" / "tiny_int8.onnx").onnx_path
    images = tmp_path / "images"
    write_jpegs(images, 5)
    bad = write_bad_files(images / "bad")
    settings = Settings(db_url=sqlite_url, model=out, runtime="onnxruntime", decoder="pillow")
    summary = LocalScan(settings, ScanSource((str(images),), (), WalkOptions(settings.extensions))).run()
    assert summary.total == 5 + len(bad) and summary.ok == 5 and summary.errors == len(bad)
    assert summary.model_sha256 == sha256_file(out)
    engine = db.make_engine(sqlite_url)
    try:
        from sqlalchemy import select

        from dfscan.db.models import Scan

        with db.session_factory(engine)() as session:
            audit = session.execute(select(Scan.settings)).scalar_one()
    finally:
        engine.dispose()
    assert audit["precision"] == "int8"


def test_quantize_refuses_to_replace_the_source_or_its_sidecar(tiny_onnx_model, calib_dir, tmp_path):
    import shutil

    # A model that reads its folder's model_info.json (any name but model.onnx may).
    folder = tmp_path / "shared"
    folder.mkdir()
    source = folder / "detector.onnx"
    shutil.copy(tiny_onnx_model, source)
    shutil.copy(tiny_onnx_model.parent / "model_info.json", folder / "model_info.json")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(QuantizeError, match="would replace the one of detector.onnx"):
        quantize_model(source, calib_dir, folder / "model.onnx")
    with pytest.raises(QuantizeError, match="is the model being quantised"):
        quantize_model(source, calib_dir, source)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    # Another name in the same folder gets its own sidecar and leaves the source's alone.
    result = quantize_model(source, calib_dir, folder / "detector_int8.onnx", max_images=4)
    assert result.info_path == folder / "detector_int8.model_info.json"
    assert (folder / "model_info.json").read_bytes() == before["model_info.json"]
    assert inspect_model(source).extra.get("precision", "fp32") == "fp32"
    assert inspect_model(result.onnx_path).extra["precision"] == "int8"


def test_quantize_without_decodable_images_fails_cleanly(tiny_onnx_model, tmp_path):
    write_bad_files(tmp_path / "bad")
    with pytest.raises(QuantizeError, match="no decodable calibration images"):
        quantize_model(tiny_onnx_model, tmp_path / "bad", tmp_path / "out" / "q.onnx")
    assert not (tmp_path / "out" / "q.onnx").exists()


def test_quantize_can_take_the_head_too(tiny_onnx_model, calib_dir, tmp_path):
    result = quantize_model(tiny_onnx_model, calib_dir, tmp_path / "all.onnx", max_images=8, float_head=False)
    assert result.quantized_nodes["Conv"] == 5 and result.quantized_nodes["Gemm"] == 2


def test_quantize_command(tiny_onnx_model, calib_dir, tmp_path):
    out = tmp_path / "cli" / "tiny_int8.onnx"
    result = CliRunner().invoke(
        main, ["quantize", str(tiny_onnx_model), "--calibrate", str(calib_dir), "--out", str(out), "--json",
               "--max-images", "10"],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["calibration_images"] == 10 and data["agreement"]["images"] == 10
    assert Path(data["model"]) == out and out.is_file()

    text = CliRunner().invoke(main, ["quantize", str(tiny_onnx_model), "--calibrate", str(calib_dir), "--out",
                                     str(tiny_onnx_model.parent / "model.onnx")])  # fmt: skip
    assert text.exit_code == 1
    assert "Error: --out" in text.output and "Traceback" not in text.output
