"""TensorRT precisions as data, and the rule that picks one for a GPU.

Every engine is built from a strongly typed network (TensorRT 11 has nothing
else), so a precision is a property of the ONNX graph, not a builder flag: each
precision names the graph it is built from (``graph``: the model's own FP32
export, its FP16 conversion, or the explicitly quantised Q/DQ file of
``dfscan quantize --target tensorrt``), the oldest compute capability with fast
kernels for it, and whether that graph can be made without data.  The runtime
never builds INT8 on its own: an INT8 engine exists only if someone quantised
the model and ran ``dfscan build-engine --precision int8``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dfscan.trt.errors import PrecisionUnsupported, UnknownPrecision


@dataclass(frozen=True)
class Precision:
    name: str
    description: str
    graph: str  # the sidecar "precision" of the ONNX file the engine is built from
    min_capability: tuple[int, int]
    needs_calibration: bool  # its graph needs calibration images (dfscan quantize), so is never made automatically


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", "FP32 as exported (TF32 where the GPU has it)", "fp32", (5, 0), False),
        Precision("fp16", "the FP16 conversion of the ONNX file (LSTM, reductions, head in FP32)", "fp16", (5, 3),
                  False),
        Precision("int8", "the explicitly quantised Q/DQ file (signed INT8, symmetric)", "int8", (6, 1), True),
    )
}

# What a runtime prefers when no precision is asked for: an engine someone
# built deliberately (INT8 needs calibration, so it only exists on purpose),
# then the fastest that needs no calibration.
PREFERENCE: tuple[str, ...] = ("int8", "fp16", "fp32")
# Built automatically on a cache miss, best first.
AUTO_BUILD: tuple[str, ...] = ("fp16", "fp32")


def get_precision(name: str) -> Precision:
    try:
        return PRECISIONS[name]
    except KeyError:
        hint = "; bf16 runs with --runtime torch" if name == "bf16" else ""
        raise UnknownPrecision(
            f"unknown precision {name!r}; known precisions: {', '.join(PRECISIONS)}{hint}"
        ) from None


def check_supported(precision: Precision, capability: tuple[int, int], gpu_name: str = "this GPU") -> None:
    if tuple(capability) < precision.min_capability:
        need = ".".join(map(str, precision.min_capability))
        have = ".".join(map(str, capability))
        raise PrecisionUnsupported(
            f"{precision.name} needs compute capability {need} or newer; {gpu_name} has {have}"
        )


def choose_precision(
    requested: str | None, capability: tuple[int, int], cached: Iterable[str] = ()
) -> tuple[Precision, bool]:
    """The precision to run, and whether its engine must be built now.

    ``requested`` wins (and is checked against the GPU); otherwise the best
    cached engine the GPU supports; otherwise the best precision that can be
    built without calibration data.
    """
    cached = set(cached)
    if requested is not None:
        precision = get_precision(requested)
        check_supported(precision, capability)
        return precision, requested not in cached
    for name in PREFERENCE:
        if name in cached and tuple(capability) >= PRECISIONS[name].min_capability:
            return PRECISIONS[name], False
    for name in AUTO_BUILD:
        if tuple(capability) >= PRECISIONS[name].min_capability:
            return PRECISIONS[name], True
    raise PrecisionUnsupported(f"no TensorRT precision runs on compute capability {capability[0]}.{capability[1]}")
