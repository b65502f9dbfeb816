"""Static INT8 quantisation for ONNX Runtime on the CPU, and its agreement with the FP32 model.

``quantize_model`` calibrates activation ranges on a folder of images decoded
exactly as the scanner decodes them (the Pillow path), writes a QDQ model with
per-channel INT8 weights and UINT8 activations (ONNX Runtime's advice for x86
CPUs with VNNI, and harmless without it), then scores the calibration images
(or another folder) with both models and reports how often the verdicts are the
same and the largest change in p_fake.  The output gets its own
sidecar (``NAME.model_info.json``): the original's fields, ``"precision": "int8"``, its own
sha256, and the agreement figures, so the scanner accepts it like any model
(``OnnxRuntime`` reports ``precision`` from the sidecar).

What is quantised: the backbone (every convolution and the element-wise ops
between them), which is nearly all of the model's cost.  The BiLSTM and the
classifier after it stay in float by default (``float_head``): ONNX Runtime
quantises ``LSTM`` only dynamically anyway, the head costs next to nothing,
and rounding there lands directly on the logits, so keeping it in float
buys agreement for free.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfscan.core.errors import UnknownName, first_line
from dfscan.core.registry import Registry
from dfscan.trt.model_info import ModelInfo, inspect_model, sidecar_for_reading, sidecar_for_writing, write_model_info
from dfscan.detector.errors import DetectorError
from dfscan.trt.errors import Int8CalibrationError
from dfscan.detector.calibration import calibration_images

DEFAULT_MAX_IMAGES = 256
# MinMax calibration reduces every tensor to its range inside the calibration
# model, so memory stays that of inference; the histogram methods (entropy,
# percentile) keep whole tensors of every batch and need far more.
# (ORT 1.32's CalibMaxIntermediateOutputs discards data instead of merging it,
# so it is not used.)
CALIBRATION_BATCH = 16


@dataclass(frozen=True)
class QuantTarget:
    """Who runs the quantised file: the Q/DQ layout each runtime accepts."""

    name: str
    activations: str  # "uint8" | "int8"
    symmetric: bool  # zero points of 0 (TensorRT's explicit quantisation accepts nothing else)
    quantize_bias: bool  # INT32 biases (ONNX Runtime's default); TensorRT takes float biases
    description: str


class QuantizeError(DetectorError):
    """Quantisation can't start or failed (no calibration images, bad output place, ORT failure)."""


class UnknownQuantTarget(QuantizeError, UnknownName):
    """A quantisation target that is not in :data:`TARGETS`; the message lists the known ones."""


TARGETS: Registry[QuantTarget] = Registry("quantisation target", UnknownQuantTarget, plural="targets", entries=(
    QuantTarget("cpu", "uint8", False, True, "ONNX Runtime on the CPU: unsigned activations with zero points"),
    QuantTarget("tensorrt", "int8", True, False,
                "TensorRT explicit quantisation: signed INT8, symmetric (ONNX Runtime runs it too)"),
))


@dataclass(frozen=True)
class Agreement:
    """How the INT8 model's verdicts compare with the FP32 model's on the same images."""

    images: int
    identical_verdicts: int
    identical_share: float
    max_abs_dp_fake: float
    mean_abs_dp_fake: float
    fp32_fake_share: float
    int8_fake_share: float
    fp32_p_fake_min: float
    fp32_p_fake_max: float
    fp32_p_fake_std: float
    threshold: float


@dataclass(frozen=True)
class QuantizeResult:
    onnx_path: Path
    info_path: Path
    source: Path
    calibration_images: int
    skipped_images: int
    seconds: float
    agreement: Agreement
    quantized_nodes: dict[str, int]


def _calibration_reader(input_name: str, tensors: np.ndarray, batch: int):
    from onnxruntime.quantization import CalibrationDataReader

    class TensorReader(CalibrationDataReader):
        """Feeds pre-decoded images to the calibrator in small batches."""

        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = iter(
                tensors[i : i + batch] for i in range(0, len(tensors), batch)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            part = next(self._batches, None)
            return None if part is None else {input_name: np.ascontiguousarray(part)}

    return TensorReader()


def quantize_model(
    model: Path,
    calibrate: Path | Sequence[Path] | np.ndarray,
    out: Path,
    *,
    max_images: int = DEFAULT_MAX_IMAGES,
    check: Path | Sequence[Path] | None = None,
    method: str = "minmax",
    float_head: bool = True,
    target: str = "cpu",
) -> QuantizeResult:
    """Write a statically quantised INT8 copy of ``model`` to ``out``, with its sidecar beside it.

    ``calibrate`` is a folder of images, a list of image files, or already
    decoded tensors; agreement is measured on ``check`` (same forms except
    tensors) when given, else on the calibration images.  ``target``
    (:data:`TARGETS`) picks the Q/DQ layout: ``tensorrt`` for the file a
    strongly typed INT8 engine is built from.  Raises :class:`QuantizeError`.
    """
    started = time.perf_counter()
    out = Path(out)
    info, spec, calibrate_method = _check_request(Path(model), out, method, target)
    tensors, skipped = _tensors(calibrate, info, max_images)
    if len(tensors) == 0:
        raise QuantizeError(f"no decodable calibration images in {calibrate} ({skipped} failed to decode)")

    keep_float = _write_quantized(info, tensors, out, spec, calibrate_method, float_head=float_head)
    quantized = _count_quantized(out)

    extra = _carried_fields(info)
    if info.frames is not None:
        extra["frames"] = info.frames  # what a video scan samples; the INT8 file scores them frame by frame
    quantization = {
        "format": "QDQ",
        "weights": "int8 per-channel",
        "activations": f"{spec.activations} per-tensor" + (" symmetric" if spec.symmetric else ""),
        "target": spec.name,
        "calibration_method": method,
        "calibration_images": int(len(tensors)),
        "source_sha256": info.sha256,
        "source_path": os.fspath(info.path),
        "quantized_nodes": quantized,
        "float_nodes": len(keep_float),
        "float_from": "the first LSTM onwards" if keep_float else None,
    }
    sidecar = lambda **more: write_model_info(  # noqa: E731 - written twice: before and after the agreement run
        out, architecture=info.architecture, classes=info.classes, input_size=info.input_size, mean=info.mean,
        std=info.std, threshold=info.threshold, temperature=info.temperature, precision="int8",
        quantization=quantization, **extra, **more,
    )
    info_path = sidecar()
    int8_info = inspect_model(out)
    check_tensors = tensors if check is None else _tensors(check, info, None)[0]
    agreement = compare_models(info, int8_info, check_tensors)
    info_path = sidecar(agreement=asdict(agreement))
    return QuantizeResult(
        onnx_path=out,
        info_path=info_path,
        source=info.path,
        calibration_images=len(tensors),
        skipped_images=skipped,
        seconds=time.perf_counter() - started,
        agreement=agreement,
        quantized_nodes=quantized,
    )


def _check_request(model: Path, out: Path, method: str, target: str) -> tuple[ModelInfo, QuantTarget, Any]:
    """(the FP32 model's info, the target, ORT's calibration method); QuantizeError for what can't be done."""
    from onnxruntime.quantization import CalibrationMethod

    info = inspect_model(model)
    if info.extra.get("precision", "fp32") != "fp32":
        raise QuantizeError(f"{info.path} is already {info.extra['precision']}; quantise the FP32 model")
    if out.suffix != ".onnx":
        raise QuantizeError(f"--out {out}: give a file name ending in .onnx")
    _check_destination(info.path, out)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}  # fmt: skip
    if method not in methods:
        raise QuantizeError(f"unknown calibration method {method!r}; known methods: {', '.join(methods)}")
    return info, TARGETS.get(target), methods[method]


def _write_quantized(info: ModelInfo, tensors: np.ndarray, out: Path, spec: QuantTarget, calibrate_method: Any, *,
                     float_head: bool) -> list[str]:
    """Calibrate on ``tensors`` and write the QDQ model to ``out``; returns the nodes kept in float."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tempfile.TemporaryDirectory(prefix="dfscan-quantize-") as work:
        source = _preprocessed(info.path, Path(work) / "pre.onnx")
        keep_float = _head_nodes(source) if float_head else []
        try:
            quantize_static(
                os.fspath(source),
                os.fspath(tmp),
                _calibration_reader(info.input_name, tensors, CALIBRATION_BATCH),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=False,
                activation_type=QuantType.QInt8 if spec.activations == "int8" else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=calibrate_method,
                nodes_to_exclude=keep_float,
                # TensorRT's Q/DQ is INT8 only: biases stay float (it fuses them itself), not ORT's INT32.
                extra_options={"ActivationSymmetric": spec.symmetric, "WeightSymmetric": True,
                               "QuantizeBias": spec.quantize_bias},
            )
        except Exception as exc:  # ORT's quantiser raises plain exceptions of many kinds
            tmp.unlink(missing_ok=True)
            raise QuantizeError(f"quantising {info.path} failed: {first_line(exc, 300)}") from None
    sidecar_for_writing(out).unlink(missing_ok=True)  # describes the file being replaced
    tmp.replace(out)
    return keep_float


def compare_models(fp32: ModelInfo, int8: ModelInfo, tensors: np.ndarray, batch: int = 64) -> Agreement:
    """Score ``tensors`` with both models (ONNX Runtime, CPU) and compare verdicts and p_fake."""
    from dfscan.trt.base import run_batched, softmax
    from dfscan.trt.onnxruntime import OnnxRuntime

    if len(tensors) == 0:
        raise QuantizeError("no images to compare the models on")
    fake = fp32.classes.index("fake") if "fake" in fp32.classes else len(fp32.classes) - 1
    p: list[np.ndarray] = []
    for info in (fp32, int8):
        runtime = OnnxRuntime(info)
        try:
            logits = np.concatenate(
                [run_batched(runtime, tensors[i : i + batch]) for i in range(0, len(tensors), batch)]
            )
        finally:
            runtime.close()
        p.append(softmax(logits, fp32.temperature)[:, fake])
    p32, p8 = p
    v32, v8 = p32 >= fp32.threshold, p8 >= fp32.threshold
    diff = np.abs(p32 - p8)
    same = int(np.sum(v32 == v8))
    return Agreement(
        images=len(tensors),
        identical_verdicts=same,
        identical_share=same / len(tensors),
        max_abs_dp_fake=float(diff.max()),
        mean_abs_dp_fake=float(diff.mean()),
        fp32_fake_share=float(v32.mean()),
        int8_fake_share=float(v8.mean()),
        fp32_p_fake_min=float(p32.min()),
        fp32_p_fake_max=float(p32.max()),
        fp32_p_fake_std=float(p32.std()),
        threshold=float(fp32.threshold),
    )


def _tensors(source: Path | Sequence[Path] | np.ndarray, info: ModelInfo, limit: int | None) -> tuple[np.ndarray, int]:
    if isinstance(source, np.ndarray):
        return (source[:limit] if limit else source).astype(np.float32, copy=False), 0
    try:
        images = calibration_images(source, info, limit=limit)
    except Int8CalibrationError as exc:
        raise QuantizeError(str(exc)) from None
    return images.tensors, images.skipped


def _check_destination(model: Path, out: Path) -> None:
    """The INT8 file must neither replace its source nor take over the source's sidecar."""
    if out.resolve() == model.resolve():
        raise QuantizeError(f"--out {out} is the model being quantised; choose another file name")
    if sidecar_for_writing(out).resolve() == sidecar_for_reading(model).resolve():
        raise QuantizeError(
            f"--out {out}: its {sidecar_for_writing(out).name} would replace the one of {model.name}; "
            f"choose another name (e.g. model_int8.onnx) or folder"
        )


def _preprocessed(model: Path, dest: Path) -> Path:
    """ONNX Runtime's pre-processing (shape inference, graph optimisation) if it manages, else the model as is."""
    from onnxruntime.quantization import quant_pre_process

    try:
        quant_pre_process(os.fspath(model), os.fspath(dest), skip_symbolic_shape=False)
    except Exception:  # noqa: BLE001 - pre-processing is an optimisation; the quantiser works without it
        return model
    return dest if dest.is_file() else model


def _head_nodes(model: Path) -> list[str]:
    """Names of the first LSTM node and of every node downstream of it: the part kept in float."""
    import onnx

    graph = onnx.load(os.fspath(model), load_external_data=False).graph
    start = next((n for n in graph.node if n.op_type == "LSTM"), None)
    if start is None:
        return []
    tainted = set(o for o in start.output if o)
    names = [start.name]
    for node in graph.node:  # ONNX nodes are topologically sorted
        if node is not start and any(i in tainted for i in node.input):
            tainted.update(o for o in node.output if o)
            names.append(node.name)
    return [n for n in names if n]


def _carried_fields(info: ModelInfo) -> dict[str, Any]:
    """The original sidecar's own extra fields, minus those the new file must restate."""
    drop = {"file", "precision", "quantization", "agreement", "onnx_version", "torch_program", "fp16", "source_sha256",
            "source_path",
            "video_model", "video_model_sha256", "video_parity_max_abs_diff"}  # an INT8 file has no video graph
    return {k: v for k, v in info.extra.items() if k not in drop}


def _count_quantized(path: Path) -> dict[str, int]:
    """Ops whose every input is dequantised INT8, by type: shows what quantisation covered."""
    import onnx

    graph = onnx.load(os.fspath(path), load_external_data=False).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    counts: dict[str, int] = {}
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        inputs = [i for i in node.input if i]
        if inputs and all(i in dequantized for i in inputs):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
