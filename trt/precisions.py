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

from dfscan.core.constants import ALL_PRECISIONS, Precision, precisions_for
from dfscan.core.registry import Registry
from dfscan.trt.errors import PrecisionUnsupported, UnknownPrecision

__all__ = ["AUTO_BUILD", "PRECISIONS", "PREFERENCE", "Precision", "check_supported", "choose_precision",
           "get_precision"]

# The engine precisions: the entries of the one precision table (dfscan.core.constants) that TensorRT runs.
# A precision only another runtime runs is named with that runtime in the message.
PRECISIONS: Registry[Precision] = Registry(
    "precision",
    UnknownPrecision,
    hints={p.name: f"{p.name} runs with --runtime {' or '.join(p.runtimes)}"
           for p in ALL_PRECISIONS.values() if "tensorrt" not in p.runtimes},
    entries=(ALL_PRECISIONS[name] for name in precisions_for("tensorrt")),
)

# What a runtime prefers when no precision is asked for: an engine someone
# built deliberately (INT8 needs calibration, so it only exists on purpose),
# then the fastest that needs no calibration.
PREFERENCE: tuple[str, ...] = ("int8", "fp16", "fp32")
# Built automatically on a cache miss, best first.
AUTO_BUILD: tuple[str, ...] = ("fp16", "fp32")


def get_precision(name: str) -> Precision:
    return PRECISIONS.get(name)


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
