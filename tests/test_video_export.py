"""The video graph of `dfscan export`: (N, T, 3, H, W) with N and T dynamic, checked against PyTorch."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from dfscan.cli import main
from dfscan.detector.errors import ExportError, ExportMismatch
from dfscan.detector.export import VIDEO_MODEL_NAME, check_parity, export_onnx
from dfscan.detector.model import save_checkpoint
from dfscan.trt.model_info import sha256_file
from tests._models import build_tiny_detector, tiny_checkpoint, tiny_video_model  # noqa: F401


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_writes_the_video_graph_beside_the_image_graph(tmp_path: Path, tiny_checkpoint: Path) -> None:
    result = export_onnx(tiny_checkpoint, tmp_path, torch_program=False)
    assert result.video_path == tmp_path / VIDEO_MODEL_NAME and result.frames == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.video.onnx", "model_info.json"]
    assert result.video_max_abs_diff is not None and result.video_max_abs_diff <= 1e-3
    sidecar = json.loads(result.info_path.read_text())
    assert sidecar["video_model"] == "model.video.onnx" and sidecar["frames"] == 16
    assert sidecar["video_model_sha256"] == sha256_file(result.video_path)
    assert sidecar["trained_on"] == "images" and sidecar["sha256"] == sha256_file(result.onnx_path)

    # The image graph is exactly what it was: one 4-D input with a dynamic batch.
    (image_input,) = onnx.load(str(result.onnx_path)).graph.input
    dims = image_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 224, 224]
    # The video graph: batch and frames dynamic.
    graph = onnx.load(str(result.video_path)).graph
    (video_input,) = graph.input
    dims = video_input.type.tensor_type.shape.dim
    assert video_input.name == "input" and [o.name for o in graph.output] == ["logits"]
    assert dims[0].dim_param and dims[1].dim_param and dims[0].dim_param != dims[1].dim_param
    assert [d.dim_value for d in dims[2:]] == [3, 224, 224]


def test_video_graph_agrees_with_pytorch_at_any_batch_and_length(tiny_video_model: Path) -> None:
    session = _session(tiny_video_model)
    model = build_tiny_detector()
    rng = np.random.default_rng(0)
    for n, t in ((1, 4), (3, 7), (2, 1)):
        x = rng.standard_normal((n, t, 3, 224, 224), dtype=np.float32)
        (logits,) = session.run(["logits"], {"input": x})
        assert logits.shape == (n, 2)
        with torch.no_grad():
            np.testing.assert_allclose(logits, model(torch.from_numpy(x)).numpy(), atol=1e-4)
    # A sequence of one frame is the image graph's single frame.
    image = _session(tiny_video_model.with_name("model.onnx"))
    x = rng.standard_normal((2, 3, 224, 224), dtype=np.float32)
    np.testing.assert_allclose(session.run(None, {"input": x[:, None]})[0], image.run(None, {"input": x})[0],
                               atol=1e-5)
    sidecar = json.loads(tiny_video_model.with_name("model_info.json").read_text())
    assert sidecar["frames"] == 4 and sidecar["video_model"] == tiny_video_model.name


def test_video_parity_check_catches_a_wrong_model(tiny_video_model: Path) -> None:
    model = build_tiny_detector()
    assert check_parity(model, tiny_video_model, batch_sizes=(1, 2), frames=(4, 2)) <= 1e-3
    with torch.no_grad():
        model.lstm.weight_hh_l0.add_(0.5)  # only a sequence longer than one frame sees the recurrent weights
    with pytest.raises(ExportMismatch, match="differ by"):
        check_parity(model, tiny_video_model, batch_sizes=(1, 2), frames=(4, 2))


def test_frames_come_from_a_checkpoint_trained_on_videos(tmp_path: Path) -> None:
    model = build_tiny_detector()
    model.config = dataclasses.replace(model.config, trained_on="videos", frames=6)
    ckpt = save_checkpoint(tmp_path / "video.pt", model)
    result = export_onnx(ckpt, tmp_path / "a", torch_program=False)
    sidecar = json.loads(result.info_path.read_text())
    assert result.frames == 6 and sidecar["frames"] == 6 and sidecar["trained_on"] == "videos"
    assert export_onnx(ckpt, tmp_path / "b", torch_program=False, check=False, frames=3).frames == 3
    with pytest.raises(ExportError, match="frames must be between 1 and 1024"):
        export_onnx(ckpt, tmp_path / "c", frames=0)


def test_no_video_writes_the_image_graph_only_and_drops_an_old_video_graph(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    export_onnx(tiny_checkpoint, tmp_path, torch_program=False, check=False, frames=2)
    assert (tmp_path / VIDEO_MODEL_NAME).is_file()
    result = export_onnx(tiny_checkpoint, tmp_path, torch_program=False, video=False, check=False)
    assert result.video_path is None and not (tmp_path / VIDEO_MODEL_NAME).exists()
    sidecar = json.loads(result.info_path.read_text())
    assert "video_model" not in sidecar and sidecar["frames"] == 16


def test_export_command_reports_the_video_graph(tmp_path: Path, tiny_checkpoint: Path) -> None:
    out = tmp_path / "cli"
    res = CliRunner().invoke(main, ["export", str(tiny_checkpoint), "--out", str(out), "--frames", "3",
                                    "--no-torch-program"])
    assert res.exit_code == 0, res.output
    assert "model.video.onnx" in res.output and "video graph: 3 frames per video" in res.output
    assert json.loads((out / "model_info.json").read_text())["frames"] == 3
    res = CliRunner().invoke(main, ["export", str(tiny_checkpoint), "--out", str(out), "--frames", "0"])
    assert res.exit_code != 0 and "--frames" in res.output


def test_an_int8_copy_keeps_frames_but_names_no_video_graph(tmp_path: Path, tiny_video_model: Path) -> None:
    from dfscan.detector.quantize import quantize_model
    from dfscan.trt.model_info import inspect_model

    tensors = np.random.default_rng(0).standard_normal((4, 3, 224, 224), dtype=np.float32)
    result = quantize_model(tiny_video_model.with_name("model.onnx"), tensors, tmp_path / "int8" / "model.onnx")
    info = inspect_model(result.onnx_path)
    assert info.frames == 4 and info.video_model is None
    assert "video_model_sha256" not in info.extra


def test_the_video_program_check_catches_an_unmasked_pad() -> None:
    """The export's check of the padded video program: the masked BiLSTM passes, the plain model on the pad fails."""
    from dfscan.detector.export import check_padded_parity
    from dfscan.detector.padded import PaddedSequenceModel

    model = build_tiny_detector()
    assert check_padded_parity(model, PaddedSequenceModel(model), 4, torch.Generator().manual_seed(0)) <= 1e-6
    with pytest.raises(ExportMismatch, match="padded video program and the model differ"):
        check_padded_parity(model, lambda x, lengths: model(x), 4, torch.Generator().manual_seed(0))
