"""An exported model folder, and what a runtime needs to know about its ONNX model, read without running it.

:class:`ModelFolder` is the one place that knows the folder's files (the image
and video graphs, the ``.pt2``, the sidecar, the graphs and engines TensorRT
builds from it); everything that finds or opens one of them asks it.
``inspect_model`` accepts any ONNX file: the detector's own export (with its
``model_info.json`` sidecar) or the original project's bare file. It checks the
graph's interface and fills what the graph can't say (classes, normalisation,
threshold) from the sidecar or from defaults. No torch here: the scanning side
must not pay for importing it just to look at a model.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dfscan.core.constants import MAX_FRAMES
from dfscan.trt._sidecar import (
    MEAN_RANGE,
    MODEL_INPUTS,
    STD_RANGE,
    TEMPERATURE_RANGE,
    check_fields,
    check_sha256,
)
from dfscan.trt.errors import (
    ModelInputError,
    ModelNotFound,
    ModelOutputError,
    NotAnOnnxModel,
    SidecarError,
    SidecarMismatch,
)

__all__ = [
    "CLASSES", "DEFAULT_TEMPERATURE", "DEFAULT_THRESHOLD", "IMAGENET_MEAN", "IMAGENET_STD", "INPUT_SIZE",
    "MAX_FRAMES", "MEAN_RANGE", "MODEL_INPUTS", "STD_RANGE", "TEMPERATURE_RANGE", "ModelFolder", "ModelInfo",
    "inspect_model", "inspect_video_model", "load_model_folder", "reexport_hint", "sha256_file",
    "sidecar_for_reading", "sidecar_for_writing", "write_model_info",
]

# The model's contract, shared by training, export and every runtime.
CLASSES: tuple[str, ...] = ("real", "fake")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
INPUT_SIZE: tuple[int, int] = (224, 224)
DEFAULT_THRESHOLD = 0.5
DEFAULT_TEMPERATURE = 1.0

# The files of an exported model folder (:class:`ModelFolder`).
IMAGE_GRAPH_NAME = "model.onnx"
VIDEO_MODEL_NAME = "model.video.onnx"
VIDEO_PROGRAM_NAME = "model.video.pt2"
PROGRAM_NAME = "model.pt2"
SIDECAR_NAME = "model_info.json"
ENGINE_DIR_NAME = "engines"
FP16_SUFFIX = "_fp16"
INT8_SUFFIX = "_int8"
# The sidecar's entry for the .pt2 (a dict with its "file", "sha256" and "onnx_sha256").
PROGRAM_KEY = "torch_program"
# The sidecar's entry for the video graph's .pt2: the same fields, "onnx_sha256" the video graph's, and the fixed
# sequence length "frames" it was exported at (shorter sequences are padded and masked, detector.padded).
VIDEO_PROGRAM_KEY = "torch_video_program"

SIDECAR_FORMAT = 1
_HASH_BLOCK = 1 << 20
# Sidecar keys read into ModelInfo fields; any other key lands in ``extra``.
_KNOWN_KEYS = frozenset(
    {"architecture", "classes", "input_size", "mean", "std", "threshold", "temperature", "sha256", "created_at",
     "opset", "format", "input", "video_model", "frames"}
)


@dataclass(frozen=True)
class ModelFolder:
    """Every file of one exported model, found by its role: the one place that knows their names.

    Like a model in Triton's model repository, an exported model is a folder::

        model.onnx         the image graph, (N, 3, H, W) -> (N, 2) logits; any other NAME.onnx may be the model
        model_info.json    its sidecar (NAME.model_info.json for another NAME.onnx, so models can share a folder)
        model.video.onnx   the video graph, (N, T, 3, H, W), named by the sidecar's "video_model"
        model.pt2          the torch.export program, named by the sidecar's "torch_program"
        model.video.pt2    the video graph's program (T fixed, padded and masked), "torch_video_program"
        NAME_fp16.onnx     the FP16 graph and NAME_int8.onnx the Q/DQ graph that TensorRT engines are built from
        engines/           built TensorRT engines and timing caches (dfscan.trt.cache)

    Only paths: nothing is opened until :func:`inspect_model` (or :meth:`inspect`) reads the model.
    """

    model: Path  # the image graph

    @classmethod
    def of(cls, path: Path | str) -> ModelFolder:
        """The folder of ``path``: an ONNX file, or a folder holding ``model.onnx``."""
        path = Path(path)
        if path.is_dir() and (path / IMAGE_GRAPH_NAME).is_file():
            path = path / IMAGE_GRAPH_NAME
        return cls(path)

    @classmethod
    def export_to(cls, directory: Path | str) -> ModelFolder:
        """The folder ``dfscan export`` writes: ``directory/model.onnx`` and the files beside it."""
        return cls(Path(directory) / IMAGE_GRAPH_NAME)

    @property
    def directory(self) -> Path:
        return self.model.parent

    def beside(self, name: str) -> Path:
        """A file the sidecar names (the video graph, the .pt2): always in the model's folder."""
        return self.directory / name

    @property
    def sidecar(self) -> Path:
        """The sidecar to read: the model's own ``NAME.model_info.json`` if there is one, else the folder's."""
        own = self.model.with_name(f"{self.model.stem}.{SIDECAR_NAME}")
        return own if own.is_file() else self.directory / SIDECAR_NAME

    @property
    def sidecar_to_write(self) -> Path:
        """``model_info.json`` for ``model.onnx``; ``NAME.model_info.json`` for any other ``NAME.onnx``.

        Several models can then share a folder (an FP32 export and its INT8
        quantisation) without one's sidecar claiming the other.
        """
        if self.model.name == IMAGE_GRAPH_NAME:
            return self.directory / SIDECAR_NAME
        return self.model.with_name(f"{self.model.stem}.{SIDECAR_NAME}")

    @property
    def video_graph(self) -> Path:
        """Where ``dfscan export`` writes the video graph (a reader takes the name the sidecar gives)."""
        return self.beside(VIDEO_MODEL_NAME)

    @property
    def program(self) -> Path:
        """Where ``dfscan export`` writes the torch.export program (a reader takes the sidecar's name)."""
        return self.beside(PROGRAM_NAME)

    @property
    def video_program(self) -> Path:
        """Where ``dfscan export`` writes the video graph's torch.export program (T fixed, padded and masked)."""
        return self.beside(VIDEO_PROGRAM_NAME)

    @property
    def fp16_graph(self) -> Path:
        """``NAME_fp16.onnx`` beside ``NAME.onnx``: where TensorRT looks for the FP16 graph of a model."""
        return self.model.with_name(f"{self.model.stem}{FP16_SUFFIX}.onnx")

    @property
    def int8_graph(self) -> Path:
        """``NAME_int8.onnx`` beside ``NAME.onnx``: where TensorRT looks for the model's Q/DQ file."""
        return self.model.with_name(f"{self.model.stem}{INT8_SUFFIX}.onnx")

    @property
    def engines(self) -> Path:
        """``engines/`` beside the model: the default TensorRT engine cache."""
        return self.directory / ENGINE_DIR_NAME

    def read_sidecar(self) -> dict[str, Any] | None:
        """The sidecar's raw record (None when there is none); :class:`SidecarError` when it is no JSON object.

        Unchecked: :func:`inspect_model` checks each field (and that the sidecar is this model's).
        """
        side = self.sidecar
        if not side.is_file():
            return None
        try:
            raw = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SidecarError(f"{side} is not readable JSON ({exc}); fix or delete it") from None
        if not isinstance(raw, dict):
            raise SidecarError(f"{side} must hold a JSON object; fix or delete it")
        return raw

    def inspect(self) -> ModelInfo:
        return inspect_model(self.model)


def load_model_folder(path: Path | str) -> ModelFolder:
    """The exported model at ``path`` (an ONNX file or its folder): every file of it by role, nothing read yet."""
    return ModelFolder.of(path)


@dataclass(frozen=True)
class ModelInfo:
    """An ONNX model's interface and metadata; ``fixed_batch`` is None when the batch is dynamic."""

    path: Path
    sha256: str
    architecture: str
    classes: tuple[str, ...]
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    threshold: float
    temperature: float
    input_name: str
    output_name: str
    fixed_batch: int | None
    opset: int
    created_at: str | None
    has_sidecar: bool
    extra: dict[str, Any] = field(default_factory=dict)
    input: str = "whole-image"
    # Videos: the sequence graph beside this model ((N, T, 3, H, W), N and T dynamic, the same
    # normalisation and (N, 2) logits), None when there is none; and the T it was trained with.
    video_model: Path | None = None
    frames: int | None = None
    # 4: (N, 3, H, W) images; 5: (N, T, 3, H, W) sequences (the video model's own description).
    rank: int = 4

    @property
    def folder(self) -> ModelFolder:
        """The exported model folder this graph lies in: its sidecar, its other graphs, its engines."""
        return ModelFolder(self.path)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks so large models don't fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def write_model_info(
    onnx_path: Path,
    *,
    architecture: str,
    classes: tuple[str, ...] = CLASSES,
    input_size: tuple[int, int] = INPUT_SIZE,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    threshold: float = DEFAULT_THRESHOLD,
    temperature: float = DEFAULT_TEMPERATURE,
    opset: int | None = None,
    input: str = "whole-image",
    **extra: Any,
) -> Path:
    """Write ``model_info.json`` next to ``onnx_path``, stamped with the file's sha256; returns its path.

    Extra keyword arguments (exporter versions, the checkpoint, ...) are stored as-is
    and come back in ``ModelInfo.extra``; they must be JSON-serialisable.
    """
    import onnx

    onnx_path = Path(onnx_path)
    if opset is None:
        opset = _default_opset(onnx.load(onnx_path, load_external_data=False))
    record: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "file": onnx_path.name,
        "architecture": architecture,
        "classes": list(classes),
        "input_size": list(input_size),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "threshold": float(threshold),
        "temperature": float(temperature),
        "sha256": sha256_file(onnx_path),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "opset": int(opset),
        "input": input,
    }
    extra.setdefault("onnx_version", onnx.__version__)
    record.update(extra)
    out = ModelFolder(onnx_path).sidecar_to_write
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out)
    return out


def inspect_model(path: Path) -> ModelInfo:
    """Validate the ONNX file at ``path`` (or ``path/model.onnx``) and describe it, without running it."""
    folder = load_model_folder(path)
    path = folder.model
    if not path.is_file():
        raise ModelNotFound(f"model {path} does not exist; export one with `dfscan export CHECKPOINT --out DIR`")
    model = _load_graph(path)
    graph = model.graph

    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise ModelInputError(f"{path}: expected one image input, found {len(inputs)} ({names}). {_hint(path)}")
    inp = inputs[0]
    fixed_batch, graph_hw = _check_input(path, inp)
    if not graph.output:
        raise ModelOutputError(f"{path}: the graph has no output. {_hint(path)}")
    out = graph.output[0]

    sha = sha256_file(path)
    sidecar = _read_sidecar(folder, sha)
    classes = sidecar.get("classes", CLASSES)
    _check_output(path, model, out, len(classes))

    size = sidecar.get("input_size")
    if graph_hw is not None and size is not None and size != graph_hw:
        raise SidecarError(
            f"{folder.sidecar}: input_size {list(size)} contradicts the graph's {list(graph_hw)}; "
            f"delete the sidecar or re-export"
        )
    return ModelInfo(
        path=path,
        sha256=sha,
        architecture=sidecar.get("architecture", "unknown"),
        classes=classes,
        input_size=graph_hw or size or INPUT_SIZE,
        mean=sidecar.get("mean", IMAGENET_MEAN),
        std=sidecar.get("std", IMAGENET_STD),
        threshold=sidecar.get("threshold", DEFAULT_THRESHOLD),
        temperature=sidecar.get("temperature", DEFAULT_TEMPERATURE),
        input_name=inp.name,
        output_name=out.name,
        fixed_batch=fixed_batch,
        opset=_default_opset(model),
        created_at=sidecar.get("created_at"),
        has_sidecar=bool(sidecar),
        extra={k: v for k, v in sidecar.get("_raw", {}).items() if k not in _KNOWN_KEYS},
        input=sidecar.get("input", "whole-image"),
        video_model=sidecar.get("video_model"),
        frames=sidecar.get("frames"),
    )


def inspect_video_model(info: ModelInfo) -> ModelInfo:
    """The description of ``info``'s sequence graph (``info.video_model``): input (N, T, 3, H, W), (N, 2) logits.

    Its classes, normalisation, threshold and temperature are the image
    model's (one sidecar describes both); its sha256 is checked against the
    sidecar's ``video_model_sha256`` when that is there.
    """
    if info.video_model is None:
        raise ModelNotFound(f"{info.path}: its sidecar names no video model")
    path = info.video_model
    if not path.is_file():
        raise ModelNotFound(f"{info.folder.sidecar} names the video model {path.name}, which is not "
                            f"beside {info.path.name}. {_hint(info.path)}")
    model = _load_graph(path)
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelInputError(f"{path}: expected one sequence input, found {len(inputs)}. {_hint(info.path)}")
    inp = inputs[0]
    dims = _dims(inp)
    if dims is None or len(dims) != 5 or (isinstance(dims[2], int) and dims[2] != 3):
        shape = "unknown" if dims is None else "(" + ", ".join(str(d or "?") for d in dims) + ")"
        raise ModelInputError(f"{path}: input {inp.name!r} has shape {shape}, expected N x T x 3 x H x W. "
                              f"{_hint(info.path)}")
    if isinstance(dims[1], int):
        raise ModelInputError(f"{path}: the number of frames is fixed at {dims[1]}; expected it dynamic. "
                              f"{_hint(info.path)}")
    hw = (dims[3], dims[4]) if isinstance(dims[3], int) and isinstance(dims[4], int) else None
    if hw is not None and hw != tuple(info.input_size):
        raise ModelInputError(f"{path}: frames of {hw[0]}x{hw[1]}, but the image model takes "
                              f"{info.input_size[0]}x{info.input_size[1]}. {_hint(info.path)}")
    out = graph.output[0] if graph.output else None
    if out is None:
        raise ModelOutputError(f"{path}: the graph has no output. {_hint(info.path)}")
    _check_output(path, model, out, len(info.classes))
    sha = sha256_file(path)
    expected = info.extra.get("video_model_sha256")
    if isinstance(expected, str) and expected != sha:
        raise SidecarMismatch(f"{info.folder.sidecar}: video_model_sha256 {expected[:12]}... is not "
                              f"{path.name}'s {sha[:12]}...; re-export so they match")
    fixed = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
    return replace(info, path=path, sha256=sha, input_name=inp.name, output_name=out.name, fixed_batch=fixed,
                   opset=_default_opset(model), video_model=None, rank=5)


def reexport_hint(info: ModelInfo) -> str:
    """A sentence with the exact command that re-exports this model, naming the checkpoint if the sidecar knows it."""
    checkpoint = info.extra.get("checkpoint")
    return _hint(info.path, checkpoint if isinstance(checkpoint, str) and checkpoint else None)


def _hint(path: Path, checkpoint: str | None = None) -> str:
    ckpt = shlex.quote(checkpoint) if checkpoint else "CHECKPOINT"
    return f"Re-export it with `dfscan export {ckpt} --out {shlex.quote(str(path.parent))}`."


def _load_graph(path: Path):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise NotAnOnnxModel(f"{path} is not an ONNX model ({type(exc).__name__}); give a .onnx file") from None
    # Protobuf parses many byte strings (an empty file among them) into an empty message.
    if model.ir_version <= 0 or not model.opset_import or not model.graph.node:
        raise NotAnOnnxModel(f"{path} is not an ONNX model (no graph in it); give a .onnx file")
    return model


def _dims(value_info) -> list[int | str | None] | None:
    """The declared dims: an int, a symbolic name, or None when unknown; None when there is no shape."""
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]


def _check_input(path: Path, inp) -> tuple[int | None, tuple[int, int] | None]:
    """Returns (fixed batch or None, (H, W) when the graph fixes them)."""
    import onnx

    elem = inp.type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(elem).lower() if elem else "not a tensor"
        raise ModelInputError(f"{path}: input {inp.name!r} is {kind}, dfscan feeds float32. {_hint(path)}")
    dims = _dims(inp)
    if dims is None or len(dims) != 4:
        rank = "unknown" if dims is None else len(dims)
        raise ModelInputError(f"{path}: input {inp.name!r} has rank {rank}, expected N x 3 x H x W. {_hint(path)}")
    batch, channels, h, w = dims
    if isinstance(channels, int) and channels != 3:
        raise ModelInputError(
            f"{path}: input {inp.name!r} has {channels} channels, expected 3 (N x 3 x H x W RGB). {_hint(path)}"
        )
    fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
    hw = (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None
    return fixed_batch, hw


def _check_output(path: Path, model, out, num_classes: int) -> None:
    import onnx

    dims = _dims(out)
    if dims is None:
        # Some exporters leave output shapes to inference; ask ONNX before giving up.
        inferred = onnx.shape_inference.infer_shapes(model)
        dims = next((_dims(o) for o in inferred.graph.output if o.name == out.name), None)
    if dims is None or len(dims) != 2 or (isinstance(dims[1], int) and dims[1] != num_classes):
        shape = "unknown" if dims is None else "(" + ", ".join(str(d or "?") for d in dims) + ")"
        raise ModelOutputError(
            f"{path}: output {out.name!r} has shape {shape}, expected (N, {num_classes}) logits. {_hint(path)}"
        )
    if out.type.tensor_type.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        raise ModelOutputError(f"{path}: output {out.name!r} is not float logits. {_hint(path)}")


def sidecar_for_writing(onnx_path: Path) -> Path:
    """The sidecar written for ``onnx_path`` (:attr:`ModelFolder.sidecar_to_write`)."""
    return ModelFolder(Path(onnx_path)).sidecar_to_write


def sidecar_for_reading(onnx_path: Path) -> Path:
    """The sidecar read for ``onnx_path`` (:attr:`ModelFolder.sidecar`)."""
    return ModelFolder(Path(onnx_path)).sidecar


def _default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _read_sidecar(folder: ModelFolder, sha: str) -> dict[str, Any]:
    """The validated sidecar fields (empty when there is none), plus the raw record under ``_raw``."""
    raw = folder.read_sidecar()
    if raw is None:
        return {}
    side = folder.sidecar

    def bad(key: str, want: str) -> SidecarError:
        return SidecarError(f"{side}: {key!r} must be {want}, got {raw[key]!r}; fix or delete the sidecar")

    recorded = check_sha256(raw, bad)
    if recorded is not None and recorded != sha:
        raise SidecarMismatch(
            f"{side} belongs to another model (its sha256 {recorded[:12]}... is not {folder.model.name}'s "
            f"{sha[:12]}...); re-export so model and sidecar match, or delete the sidecar"
        )
    fields = check_fields(raw, bad)
    if "video_model" in fields:
        fields["video_model"] = folder.beside(fields["video_model"])
    return {"_raw": raw, **fields}
