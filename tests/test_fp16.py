"""The FP16 ONNX graph TensorRT builds FP16 engines from, checked on ONNX Runtime (CPU) on every machine.

Parity is measured with a trained detector: an untrained one gives every image
nearly the same p_fake (its logits differ by ~1e-5 between images), so any
rounding would pass.  Trained for four epochs on checkerboard fakes, the tiny
detector spreads p_fake over ~0.45..0.53 across images (max |delta| measured
2e-4, against a 0.01 bound).  What the CPU measures: FP16 weights and FP16
activations at every cast boundary; ONNX Runtime's CPU provider computes
many FP16 nodes in FP32 (it inserts casts where it has no FP16 kernel), so FP16
*arithmetic* is only measured by the TensorRT test on a GPU
(tests/test_tensorrt.py::test_fp16_engine_matches_onnxruntime).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from dfscan.trt.base import softmax
from dfscan.trt.fp16 import FP32_OPS, Fp16ConversionError, convert_fp16, fp16_path, recurrent_and_after
from dfscan.trt.model_info import inspect_model
from dfscan.trt.onnxruntime import OnnxRuntime
from dfscan.workers.images.decode import Preprocess, decode_one
from tests._models import tiny_onnx_model  # noqa: F401 - fixture

TOLERANCE = 0.01  # the bound on |p_fake(FP16) - p_fake(FP32)|


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A tiny detector trained on a synthesised archive, exported; and the archive's images."""
    from dfscan.detector.export import export_onnx
    from dfscan.detector.synth import synthesize
    from dfscan.detector.train import TrainConfig, train

    root = tmp_path_factory.mktemp("fp16")
    synthesize(root / "data", 96, size=96, seed=0, layout="flat", upsamplers=("transposed_conv",))
    cfg = TrainConfig(backbone="tiny", lstm_hidden=16, batch_size=8, workers=0, epochs=4, augment=False,
                      target_accuracy=None, evaluate_test=False)  # fmt: skip
    result = train(root / "data", root / "train", cfg, log=lambda s: None)
    model = export_onnx(result.best_checkpoint, root / "model", torch_program=False).onnx_path
    images = sorted(p for p in (root / "data").rglob("*") if p.suffix in (".png", ".jpg", ".jpeg"))
    return model, images


def _p_fake(info, tensors: np.ndarray) -> np.ndarray:
    runtime = OnnxRuntime(info)
    try:
        return softmax(runtime.infer(tensors), info.temperature)[:, 1]
    finally:
        runtime.close()


def test_fp16_graph_scores_like_fp32_on_real_images(trained):
    model, images = trained
    info = inspect_model(model)
    half = convert_fp16(info)
    tensors = np.stack([decode_one(p.read_bytes(), Preprocess()) for p in images[:96]])
    p32, p16 = _p_fake(info, tensors), _p_fake(half, tensors)
    spread = float(p32.max() - p32.min())
    worst = float(np.abs(p32 - p16).max())
    print(f"\nFP16 graph vs FP32 on {len(tensors)} images: p_fake {p32.min():.4f}..{p32.max():.4f}, "
          f"max |delta p_fake| {worst:.2e}")
    assert spread > 3 * TOLERANCE, "the model does not separate the images; the check would measure nothing"
    assert worst <= TOLERANCE
    assert half.extra["fp16"]["parity_max_abs_logit_diff"] < 1e-2


def test_the_graph_is_fp16_where_it_pays_and_fp32_where_it_matters(tmp_path, tiny_onnx_model):
    info = inspect_model(tiny_onnx_model)
    half = convert_fp16(info, tmp_path / "half.onnx")
    assert half.path == tmp_path / "half.onnx" and not fp16_path(tiny_onnx_model).exists()
    graph = onnx.load(half.path).graph
    types = {t.name: t.data_type for t in graph.initializer}
    conv_weights = [n.input[1] for n in graph.node if n.op_type == "Conv"]
    assert conv_weights and all(types[w] == onnx.TensorProto.FLOAT16 for w in conv_weights)
    lstm_weights = [i for n in graph.node if n.op_type == "LSTM" for i in n.input[1:3]]
    assert lstm_weights and all(types[w] == onnx.TensorProto.FLOAT for w in lstm_weights)
    # The interface is unchanged: float32 in, float32 logits out (the scanner feeds and reads float32).
    assert half.input_name == info.input_name and half.output_name == info.output_name
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # Topologically sorted (TensorRT's parser needs it; the converter appends its casts at the end).
    onnx.checker.check_model(onnx.load(half.path), full_check=True)
    assert "LSTM" in FP32_OPS and len(recurrent_and_after(onnx.load(tiny_onnx_model).graph)) > 1
    assert half.extra["source_sha256"] == info.sha256 and half.extra["precision"] == "fp16"


def test_conversion_refuses_what_it_cannot_convert(tmp_path, tiny_onnx_model):
    info = inspect_model(tiny_onnx_model)
    half = convert_fp16(info, tmp_path / "half.onnx")
    with pytest.raises(Fp16ConversionError, match="already fp16"):
        convert_fp16(half)
    with pytest.raises(Fp16ConversionError, match="is the model being converted"):
        convert_fp16(info, tiny_onnx_model)
