"""The detector model, its checkpoints and its ONNX export, on real files and real ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from dfscan.detector.backbones import BACKBONES, get_backbone
from dfscan.detector.errors import CheckpointError, ExportError, ExportMismatch, UnknownBackbone, WeightsError
from dfscan.detector.export import check_parity, export_legacy_fixed_batch, export_onnx
from dfscan.detector.model import CLASSES, DeepfakeDetector, load_checkpoint, save_checkpoint
from tests._models import TINY_LSTM_HIDDEN, build_tiny_detector, tiny_checkpoint, tiny_onnx_model  # noqa: F401

SMALL = 64  # every backbone pools globally, so small images keep CPU tests fast


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_unknown_backbone_lists_known_names() -> None:
    with pytest.raises(UnknownBackbone) as err:
        get_backbone("vgg99")
    message = str(err.value)
    assert "'vgg99'" in message
    for name in BACKBONES:
        assert name in message
    with pytest.raises(UnknownBackbone):
        DeepfakeDetector(backbone="vgg99")


@pytest.mark.parametrize("name", ["tiny", "resnet18", "mobilenet_v3_small"])
def test_backbone_trunk_gives_feature_dim(name: str) -> None:
    spec = get_backbone(name)
    trunk = spec.build(None).eval()
    with torch.no_grad():
        feats = trunk(torch.randn(2, 3, SMALL, SMALL))
    assert feats.shape == (2, spec.feature_dim)


@pytest.mark.parametrize("name", ["tiny", "resnet18"])
def test_forward_shapes_for_frames_and_sequences(name: str) -> None:
    torch.manual_seed(0)
    model = DeepfakeDetector(backbone=name).eval()
    frames = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        assert model(frames).shape == (2, len(CLASSES))
        assert model(torch.randn(2, 3, 3, SMALL, SMALL)).shape == (2, len(CLASSES))
        # A sequence of one frame is the same thing as a single frame.
        torch.testing.assert_close(model(frames.unsqueeze(1)), model(frames))
    with pytest.raises(ValueError, match="expected"):
        model(torch.randn(3, SMALL, SMALL))


def test_backbone_weights_load_from_local_file(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    bare = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), bare)
    full = tmp_path / "resnet18_full.pth"
    torch.save({"epoch": 3, "state_dict": reference.state_dict()}, full)

    for path in (bare, full):
        trunk = get_backbone("resnet18").build(path)
        torch.testing.assert_close(trunk.conv1.weight, reference.conv1.weight)
        assert isinstance(trunk.fc, torch.nn.Identity)
    model = DeepfakeDetector("resnet18", backbone_weights=bare)
    torch.testing.assert_close(model.backbone.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)


def test_backbone_weights_errors(tmp_path: Path) -> None:
    import torchvision

    with pytest.raises(WeightsError, match="does not exist"):
        get_backbone("resnet18").build(tmp_path / "missing.pth")
    other = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), other)
    with pytest.raises(WeightsError, match="does not fit backbone 'resnet18'"):
        get_backbone("resnet18").build(other)
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="can't read"):
        get_backbone("tiny").build(junk)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = build_tiny_detector()
    path = save_checkpoint(tmp_path / "ckpt" / "tiny.pt", model, {"epochs": 12, "auc": 0.965})
    loaded, meta = load_checkpoint(path)
    assert not loaded.training
    assert loaded.config == model.config
    assert meta["extra"] == {"epochs": 12, "auc": 0.965}
    assert meta["config"]["backbone"] == "tiny" and meta["config"]["classes"] == ["real", "fake"]
    x = torch.randn(3, 3, SMALL, SMALL)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_load_bare_state_dict_needs_backbone(tmp_path: Path) -> None:
    model = build_tiny_detector()
    path = tmp_path / "bare.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="pass the backbone"):
        load_checkpoint(path)
    loaded, _ = load_checkpoint(path, backbone="tiny")
    assert loaded.config.lstm_hidden == TINY_LSTM_HIDDEN and loaded.config.lstm_layers == 2
    x = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(path, backbone="resnet18")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_export_writes_model_and_sidecar(tmp_path: Path, tiny_checkpoint: Path) -> None:
    result = export_onnx(tiny_checkpoint, tmp_path / "out", threshold=0.7)
    assert result.onnx_path == tmp_path / "out" / "model.onnx" and result.onnx_path.is_file()
    assert result.info_path == tmp_path / "out" / "model_info.json" and result.info_path.is_file()
    assert not list((tmp_path / "out").glob("*.tmp")) and not list((tmp_path / "out").glob("*.data"))
    assert result.opset == 17 and result.exporter == "torchscript"
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-3
    assert result.info.fixed_batch is None and result.info.threshold == 0.7
    sidecar = json.loads(result.info_path.read_text())
    assert sidecar["sha256"] == result.info.sha256 and sidecar["opset"] == 17
    assert sidecar["checkpoint"] == str(tiny_checkpoint.resolve())

    again = export_onnx(tiny_checkpoint, tmp_path / "out", check=False)  # re-export over the old files
    assert again.max_abs_diff is None and again.info.has_sidecar and again.info.threshold == 0.5


def test_export_rejects_bad_options(tmp_path: Path, tiny_checkpoint: Path) -> None:
    with pytest.raises(ExportError, match="known exporters: torchscript, dynamo"):
        export_onnx(tiny_checkpoint, tmp_path, exporter="tf")
    with pytest.raises(ExportError, match="opset 11 is too old"):
        export_onnx(tiny_checkpoint, tmp_path, opset=11)
    assert not list(tmp_path.iterdir())


def test_exported_graph_has_dynamic_batch(tiny_onnx_model: Path) -> None:
    graph = onnx.load(str(tiny_onnx_model)).graph
    (inp,) = graph.input
    assert inp.name == "input" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 224, 224]
    assert [o.name for o in graph.output] == ["logits"]
    assert any(node.op_type == "LSTM" for node in graph.node)

    session = _session(tiny_onnx_model)
    model = build_tiny_detector()
    for n in (1, 5):
        x = np.random.default_rng(n).standard_normal((n, 3, 224, 224), dtype=np.float32)
        (logits,) = session.run(["logits"], {"input": x})
        assert logits.shape == (n, 2)
        with torch.no_grad():
            np.testing.assert_allclose(logits, model(torch.from_numpy(x)).numpy(), atol=1e-4)


def test_parity_check_catches_a_wrong_model(tiny_onnx_model: Path) -> None:
    model = build_tiny_detector()
    assert check_parity(model, tiny_onnx_model, batch_sizes=(2,)) <= 1e-3
    with torch.no_grad():
        model.classifier[3].bias.add_(0.5)
    with pytest.raises(ExportMismatch) as err:
        check_parity(model, tiny_onnx_model, batch_sizes=(2,))
    assert err.value.max_abs_diff == pytest.approx(0.5, abs=1e-3)
    assert err.value.atol == 1e-3 and "differ by" in str(err.value)


def test_legacy_fixed_batch_export(tmp_path: Path, tiny_checkpoint: Path) -> None:
    path = export_legacy_fixed_batch(tiny_checkpoint, tmp_path / "legacy" / "deepfake_detector.onnx")
    assert sorted(p.name for p in path.parent.iterdir()) == ["deepfake_detector.onnx"]
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 11
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    session = _session(path)
    assert [o.name for o in session.get_outputs()] == ["output"]
    x = np.zeros((1, 3, 224, 224), dtype=np.float32)
    assert session.run(None, {"input": x})[0].shape == (1, 2)
    with pytest.raises(Exception, match="(?i)dimension"):
        session.run(None, {"input": np.zeros((2, 3, 224, 224), dtype=np.float32)})


@pytest.mark.slow
def test_dynamo_exporter_also_exports_a_dynamic_batch(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """torch's default exporter: opset 18 at least, ~5 s even for the tiny model."""
    result = export_onnx(tiny_checkpoint, tmp_path, exporter="dynamo")
    assert result.opset >= 18 and result.info.fixed_batch is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.onnx", "model.pt2", "model.video.onnx", "model.video.pt2", "model_info.json"]  # no .data file
    out = _session(result.onnx_path).run(None, {"input": np.zeros((5, 3, 224, 224), dtype=np.float32)})[0]
    assert out.shape == (5, 2)


@pytest.mark.slow
def test_full_resnext50_detector(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The production model: ~40 M parameters (the original README's "~25M" counts the backbone only)."""
    torch.manual_seed(0)
    model = DeepfakeDetector().eval()
    params = sum(p.numel() for p in model.parameters())
    backbone = sum(p.numel() for p in model.backbone.parameters())
    with capsys.disabled():
        print(f"\nresnext50_32x4d detector: {params:,} parameters ({backbone:,} in the backbone)")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 2)
    assert 30_000_000 < params < 50_000_000

    result = export_onnx(save_checkpoint(tmp_path / "full.pt", model), tmp_path / "onnx")
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-3
    assert result.info.fixed_batch is None and "resnext50_32x4d" in result.info.architecture
