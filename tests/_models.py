"""Small real models for tests: a seeded ``tiny``-backbone detector, its checkpoint and ONNX exports.

Use the plain functions with a directory, or import the session fixtures into a
test module (``from tests._models import tiny_onnx_model``). Everything is
deterministic: the same seed gives the same weights, so the same logits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

TINY_SEED = 1234
# A small LSTM keeps the file ~0.3 MB and the export well under a second.
TINY_LSTM_HIDDEN = 32


def build_tiny_detector(seed: int = TINY_SEED):
    """A ``tiny``-backbone detector in eval mode, its weights fixed by ``seed`` (global RNG untouched)."""
    import torch

    from dfscan.detector.model import DeepfakeDetector

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DeepfakeDetector("tiny", lstm_hidden=TINY_LSTM_HIDDEN)
        # Fresh BatchNorm statistics are 0/1; give them real values so they show up in parity checks.
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def save_tiny_checkpoint(directory: Path, seed: int = TINY_SEED) -> Path:
    """Write ``directory/tiny.pt`` and return its path."""
    from dfscan.detector.model import save_checkpoint

    return save_checkpoint(Path(directory) / "tiny.pt", build_tiny_detector(seed), {"purpose": "tests"})


def export_tiny_model(directory: Path, seed: int = TINY_SEED) -> Path:
    """Export the tiny detector to ``directory/model.onnx`` (+ ``model_info.json``); returns the ONNX path."""
    from dfscan.detector.export import export_onnx

    directory = Path(directory)
    checkpoint = save_tiny_checkpoint(directory / "checkpoint", seed)
    return export_onnx(checkpoint, directory).onnx_path


def export_tiny_video_model(directory: Path, seed: int = TINY_SEED, frames: int = 4) -> Path:
    """Export the tiny detector with its video graph; returns ``directory/model.video.onnx``.

    ``directory`` also gets ``model.onnx`` and a ``model_info.json`` with ``"video_model": "model.video.onnx"``
    and ``"frames": frames`` (4 by default: small sequences keep tests fast; the graph takes any T).
    """
    from dfscan.detector.export import export_onnx

    directory = Path(directory)
    checkpoint = save_tiny_checkpoint(directory / "checkpoint", seed)
    result = export_onnx(checkpoint, directory, frames=frames, torch_program=False)
    assert result.video_path is not None
    return result.video_path


def export_tiny_legacy_model(directory: Path, seed: int = TINY_SEED) -> Path:
    """Export the tiny detector as the original project did: ``directory/legacy.onnx``, batch fixed at 1, no sidecar."""
    from dfscan.detector.export import export_legacy_fixed_batch

    directory = Path(directory)
    checkpoint = save_tiny_checkpoint(directory / "checkpoint", seed)
    return export_legacy_fixed_batch(checkpoint, directory / "legacy.onnx")


# Each test module that imports a fixture registers its own copy, and pytest would run a
# session fixture once per copy; this cache (keyed by the session's base temp dir) makes it once.
_SESSION_CACHE: dict[tuple[str, str], Path] = {}


def _once(name: str, make: Callable[[Path], Path], factory: pytest.TempPathFactory) -> Path:
    key = (name, str(factory.getbasetemp()))
    if key not in _SESSION_CACHE:
        _SESSION_CACHE[key] = make(factory.mktemp(name))
    return _SESSION_CACHE[key]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny detector checkpoint, written once per session."""
    return _once("tiny_checkpoint", save_tiny_checkpoint, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model.onnx`` of the tiny detector with its ``model_info.json``, exported once per session. Don't modify it."""
    return _once("tiny_onnx", export_tiny_model, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_video_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model.video.onnx`` (N, T, 3, H, W) of the tiny detector, beside its ``model.onnx`` and sidecar
    (``frames`` 4), exported once per session. Don't modify it."""
    return _once("tiny_video", export_tiny_video_model, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_legacy_onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny detector exported like the original project (batch 1, output ``output``, no sidecar)."""
    return _once("tiny_legacy", export_tiny_legacy_model, tmp_path_factory)


def export_linear_probe_model(directory: Path, seed: int = TINY_SEED, scale: float = 0.004) -> Path:
    """``directory/probe.onnx`` (+ sidecar): logits = flatten(x) @ W, W random normal * ``scale``.

    The tiny detector's p_fake barely moves between images (random weights, BatchNorm, LSTM), so
    comparing two preprocessing paths through it can't fail. This probe's p_fake spreads over
    0..1 across images and moves with every pixel of the input: a strict check of preprocessing.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from dfscan.trt.model_info import write_model_info

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    h = w = 224
    weights = np.random.default_rng(seed).normal(0.0, scale, (3 * h * w, 2)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "W"], ["logits"])],
        "linear_probe",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="dfscan-tests")
    model.ir_version = 8
    path = directory / "probe.onnx"
    onnx.save(model, path)
    write_model_info(path, architecture="linear-probe")
    return path


@pytest.fixture(scope="session")
def linear_probe_onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ONNX model whose p_fake depends strongly on every input pixel (see export_linear_probe_model)."""
    return _once("linear_probe", export_linear_probe_model, tmp_path_factory)
