"""inspect_model on real ONNX files: exports, the original project's file, and broken ones built with onnx.helper."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, save_model

from dfscan.trt.errors import (
    ModelInputError,
    ModelNotFound,
    ModelOutputError,
    NotAnOnnxModel,
    SidecarError,
    SidecarMismatch,
)
from dfscan.trt.model_info import IMAGENET_MEAN, IMAGENET_STD, inspect_model, reexport_hint, write_model_info
from tests._models import tiny_legacy_onnx_model, tiny_onnx_model, tiny_video_model  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


def make_graph(
    path: Path,
    *,
    input_shape: list = ["N", 3, 64, 64],
    classes: int = 2,
    input_type: int = TensorProto.FLOAT,
    extra_input: bool = False,
    initializer_as_input: bool = False,
) -> Path:
    """A minimal classifier: GlobalAveragePool -> Flatten -> MatMul, with the interface asked for."""
    channels = input_shape[1] if len(input_shape) > 1 and isinstance(input_shape[1], int) else 3
    weight = numpy_helper.from_array(np.ones((channels, classes), dtype=np.float32), "W")
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["logits"]),
    ]
    inputs = [helper.make_tensor_value_info("x", input_type, input_shape)]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1]))
    if initializer_as_input:
        inputs.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [channels, classes]))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [input_shape[0], classes])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path))
    return path


def test_inspect_exported_model(tiny_onnx_model: Path) -> None:
    info = inspect_model(tiny_onnx_model)
    assert info.path == tiny_onnx_model and info.has_sidecar
    assert info.sha256 == hashlib.sha256(tiny_onnx_model.read_bytes()).hexdigest()
    assert info.classes == ("real", "fake") and info.input_size == (224, 224)
    assert info.mean == IMAGENET_MEAN and info.std == IMAGENET_STD
    assert (info.input_name, info.output_name) == ("input", "logits")
    assert info.fixed_batch is None and info.opset == 17
    assert info.threshold == 0.5 and info.temperature == 1.0
    assert "tiny" in info.architecture and info.created_at and info.created_at.endswith("+00:00")
    assert info.extra["exporter"] == "torchscript" and "sha256" not in info.extra
    assert inspect_model(tiny_onnx_model.parent) == info  # a directory means its model.onnx


def test_inspect_without_sidecar_uses_defaults(tmp_path: Path, tiny_onnx_model: Path) -> None:
    path = Path(shutil.copy(tiny_onnx_model, tmp_path / "bare.onnx"))
    info = inspect_model(path)
    assert not info.has_sidecar and info.architecture == "unknown" and info.created_at is None
    assert info.classes == ("real", "fake") and info.threshold == 0.5 and info.temperature == 1.0
    assert info.mean == IMAGENET_MEAN and info.input_size == (224, 224) and info.extra == {}


def test_inspect_legacy_fixed_batch(tiny_legacy_onnx_model: Path) -> None:
    info = inspect_model(tiny_legacy_onnx_model)
    assert info.fixed_batch == 1 and info.output_name == "output" and info.opset == 11
    assert not info.has_sidecar


def test_sidecar_of_another_model_is_rejected(
    tmp_path: Path, tiny_onnx_model: Path, tiny_legacy_onnx_model: Path
) -> None:
    shutil.copy(tiny_legacy_onnx_model, tmp_path / "model.onnx")
    shutil.copy(tiny_onnx_model.parent / "model_info.json", tmp_path / "model_info.json")
    with pytest.raises(SidecarMismatch, match="belongs to another model"):
        inspect_model(tmp_path / "model.onnx")


def _copy_with_sidecar(tmp_path: Path, model: Path, **changes) -> Path:
    path = Path(shutil.copy(model, tmp_path / "model.onnx"))
    record = json.loads((model.parent / "model_info.json").read_text())
    record.update(changes)
    (tmp_path / "model_info.json").write_text(json.dumps(record))
    return path


def test_wrong_sidecar_sha_is_rejected(tmp_path: Path, tiny_onnx_model: Path) -> None:
    path = _copy_with_sidecar(tmp_path, tiny_onnx_model, sha256="0" * 64)
    with pytest.raises(SidecarMismatch, match="belongs to another model"):
        inspect_model(path)


@pytest.mark.parametrize(
    "changes",
    [
        {"classes": "real,fake"},
        {"classes": ["real"]},
        {"threshold": "0.5"},
        {"threshold": 1.5},
        {"temperature": 0},
        # Numbers of the right type that make every probability NaN or meaningless.
        {"temperature": 1e-320},
        {"temperature": 1e-5},
        {"temperature": 1e6},
        {"temperature": float("nan")},
        {"temperature": float("inf")},
        {"threshold": float("nan")},
        {"mean": [float("nan"), 0.5, 0.5]},
        {"mean": [1e308, 0.5, 0.5]},
        {"std": [1e-320, 0.2, 0.2]},
        {"std": [float("inf"), 0.2, 0.2]},
        {"mean": [0.5, 0.5]},
        {"std": [0.2, 0.0, 0.2]},
        {"input_size": [224]},
        {"input_size": [256, 256]},  # contradicts the graph's 224 x 224
        {"architecture": 7},
        {"sha256": 12},
        {"opset": True},
    ],
)
def test_sidecar_with_wrong_types_is_rejected(tmp_path: Path, tiny_onnx_model: Path, changes: dict) -> None:
    path = _copy_with_sidecar(tmp_path, tiny_onnx_model, **changes)
    with pytest.raises(SidecarError) as err:
        inspect_model(path)
    assert "\n" not in str(err.value) and not isinstance(err.value, SidecarMismatch)


def test_unreadable_sidecar_is_rejected(tmp_path: Path, tiny_onnx_model: Path) -> None:
    path = Path(shutil.copy(tiny_onnx_model, tmp_path / "model.onnx"))
    (tmp_path / "model_info.json").write_text("{not json")
    with pytest.raises(SidecarError, match="not readable JSON"):
        inspect_model(path)


@pytest.mark.parametrize("content", [b"", b"hello, I am a text file\n", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4])
def test_non_onnx_file_is_rejected(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(NotAnOnnxModel, match="is not an ONNX model"):
        inspect_model(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="does not exist"):
        inspect_model(tmp_path / "nope.onnx")


def test_handmade_graph_is_accepted(tmp_path: Path) -> None:
    info = inspect_model(make_graph(tmp_path / "ok.onnx", input_shape=[4, 3, 96, 128], initializer_as_input=True))
    assert info.fixed_batch == 4 and info.input_size == (96, 128) and info.opset == 17
    assert (info.input_name, info.output_name) == ("x", "logits")


def test_spatial_size_from_sidecar_then_default(tmp_path: Path) -> None:
    path = make_graph(tmp_path / "a" / "model.onnx", input_shape=["N", 3, "H", "W"])
    assert inspect_model(path).input_size == (224, 224)
    write_model_info(path, architecture="handmade", input_size=(256, 192), threshold=0.8, precision="fp32")
    info = inspect_model(path)
    assert info.input_size == (256, 192) and info.threshold == 0.8 and info.architecture == "handmade"
    assert info.extra["precision"] == "fp32" and info.has_sidecar


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"input_shape": ["N", 1, 64, 64]}, ModelInputError, "1 channels"),
        ({"input_shape": ["N", 3, 64]}, ModelInputError, "rank 3"),
        ({"input_type": TensorProto.FLOAT16}, ModelInputError, "float16"),
        ({"extra_input": True}, ModelInputError, "found 2"),
        ({"classes": 3}, ModelOutputError, "expected (N, 2)"),
    ],
)
def test_bad_interface_is_rejected(tmp_path: Path, kwargs: dict, error: type, words: str) -> None:
    path = make_graph(tmp_path / "bad.onnx", **kwargs)
    with pytest.raises(error) as err:
        inspect_model(path)
    message = str(err.value)
    assert words in message and "dfscan export CHECKPOINT --out" in message and "\n" not in message


def test_reexport_hint_names_checkpoint_and_directory(tiny_onnx_model: Path, tmp_path: Path) -> None:
    hint = reexport_hint(inspect_model(tiny_onnx_model))
    assert f"dfscan export {inspect_model(tiny_onnx_model).extra['checkpoint']} --out {tiny_onnx_model.parent}" in hint
    bare = inspect_model(make_graph(tmp_path / "m.onnx"))
    assert f"dfscan export CHECKPOINT --out {tmp_path}" in reexport_hint(bare)


def test_inspecting_does_not_import_torch(tiny_onnx_model: Path) -> None:
    code = (
        "import sys; from dfscan.trt.model_info import inspect_model; "
        f"info = inspect_model({str(tiny_onnx_model)!r}); "
        "assert 'torch' not in sys.modules, 'torch was imported'; print(info.fixed_batch)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"


def test_two_models_share_a_folder_each_with_its_own_sidecar(tmp_path, tiny_onnx_model):
    from dfscan.trt.model_info import inspect_model, write_model_info

    shutil.copy(tiny_onnx_model, tmp_path / "model.onnx")
    shutil.copy(tiny_onnx_model.parent / "model_info.json", tmp_path / "model_info.json")
    import onnx

    other = tmp_path / "model_int8.onnx"
    proto = onnx.load(tiny_onnx_model)
    proto.doc_string = "a different file, so a different sha256"
    onnx.save(proto, other)
    side = write_model_info(other, architecture="x", threshold=0.3, precision="int8")
    assert side.name == "model_int8.model_info.json"
    assert inspect_model(other).threshold == 0.3 and inspect_model(other).extra["precision"] == "int8"
    assert inspect_model(tmp_path / "model.onnx").threshold == 0.5


# -- the model folder: one loader for every file of an exported model ---------------------------------


def test_model_folder_names_every_file_of_an_export(tiny_video_model: Path) -> None:
    from dfscan.trt.cache import default_engine_dir
    from dfscan.trt.engine import int8_path
    from dfscan.trt.fp16 import fp16_path
    from dfscan.trt.model_info import ModelFolder, load_model_folder, sidecar_for_reading, sidecar_for_writing

    directory = tiny_video_model.parent
    folder = load_model_folder(directory)  # a folder means its model.onnx
    assert folder == ModelFolder.of(directory / "model.onnx") == ModelFolder.export_to(directory)
    assert folder.model == directory / "model.onnx" and folder.directory == directory
    assert folder.sidecar == folder.sidecar_to_write == directory / "model_info.json"
    assert folder.video_graph == tiny_video_model == directory / "model.video.onnx"
    assert folder.program == directory / "model.pt2"
    assert folder.engines == directory / "engines" == default_engine_dir(folder.model)
    assert folder.fp16_graph == directory / "model_fp16.onnx" == fp16_path(folder.model)
    assert folder.int8_graph == directory / "model_int8.onnx" == int8_path(folder.model)
    assert sidecar_for_reading(folder.model) == folder.sidecar and sidecar_for_writing(folder.model) == folder.sidecar

    info = folder.inspect()
    assert info == inspect_model(directory) and info.folder == folder
    # The files the sidecar names are resolved in the folder, by the folder.
    assert info.video_model == folder.beside(folder.read_sidecar()["video_model"]) == folder.video_graph
    assert folder.read_sidecar()["sha256"] == info.sha256


def test_model_folder_finds_the_pt2_the_sidecar_names(tiny_onnx_model: Path) -> None:
    from dfscan.trt.pytorch import PROGRAM_KEY, program_path

    info = inspect_model(tiny_onnx_model)
    entry = info.extra[PROGRAM_KEY]
    assert info.folder.beside(entry["file"]) == info.folder.program == tiny_onnx_model.parent / "model.pt2"
    assert program_path(info) == info.folder.program


def test_model_folder_of_a_second_model_in_the_folder(tmp_path: Path, tiny_onnx_model: Path) -> None:
    from dfscan.trt.model_info import ModelFolder

    shutil.copy(tiny_onnx_model, tmp_path / "model.onnx")
    shutil.copy(tiny_onnx_model.parent / "model_info.json", tmp_path / "model_info.json")
    other = ModelFolder.of(tmp_path / "model_int8.onnx")
    assert other.sidecar_to_write == tmp_path / "model_int8.model_info.json"
    assert other.sidecar == tmp_path / "model_info.json"  # until it has its own, the folder's is read
    (tmp_path / "model_int8.model_info.json").write_text("{}")
    assert other.sidecar == tmp_path / "model_int8.model_info.json"
    assert other.fp16_graph == tmp_path / "model_int8_fp16.onnx" and other.engines == tmp_path / "engines"


def test_model_folder_reads_the_raw_sidecar(tmp_path: Path, tiny_onnx_model: Path) -> None:
    from dfscan.trt.model_info import ModelFolder

    bare = ModelFolder.of(shutil.copy(tiny_onnx_model, tmp_path / "bare.onnx"))
    assert bare.read_sidecar() is None
    path = Path(shutil.copy(tiny_onnx_model, tmp_path / "model.onnx"))
    (tmp_path / "model_info.json").write_text("[1, 2]")
    with pytest.raises(SidecarError, match="must hold a JSON object"):
        ModelFolder.of(path).read_sidecar()
    with pytest.raises(SidecarError, match="must hold a JSON object"):
        inspect_model(path)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"video_model": "../model.video.onnx"}, "'video_model' must be the file name of an ONNX model beside"),
        ({"video_model_sha256": "abc"}, "'video_model_sha256' must be a hex SHA-256"),
        ({"frames": 0}, "'frames' must be a whole number of frames between 1 and 1024"),
        ({"input": "faces"}, "'input' must be 'whole-image' or 'face-crop'"),
        ({"mean": [3.0, 0.5, 0.5]}, "'mean' must be three numbers between -1 and 2 (pixels scaled to 0..1)"),
        ({"temperature": 500}, "'temperature' must be a number between 0.01 and 100"),
    ],
)
def test_sidecar_messages_say_what_a_field_must_be(tmp_path: Path, tiny_onnx_model: Path, changes: dict,
                                                   words: str) -> None:
    path = _copy_with_sidecar(tmp_path, tiny_onnx_model, **changes)
    with pytest.raises(SidecarError) as err:
        inspect_model(path)
    assert words in str(err.value) and str(tmp_path / "model_info.json") in str(err.value)


def test_only_the_model_folder_spells_the_file_names() -> None:
    """Every reader finds the graphs, the .pt2, the sidecar and the engines through ModelFolder."""
    import ast

    names = {"model.onnx", "model.video.onnx", "model.pt2", "model_info.json", "engines"}
    # The browser extension's own copy of the model (plugin/model/model.onnx) is its layout, not an export's.
    allowed = {REPO / "trt" / "model_info.py", REPO / "dfscan" / "plugin.py"}
    found = []
    for package in ("dfscan", "trt", "detector", "workers", "scanner", "db"):
        for path in (REPO / package).rglob("*.py"):
            if path in allowed:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and node.value in names:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert not found, found


def test_no_function_in_trt_is_longer_than_80_lines() -> None:
    import ast

    long = []
    for path in sorted((REPO / "trt").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.name}: {node.name} has {lines} lines")
    assert not long, long
