"""TensorRT precisions as data, and the rule that picks one for a GPU.

Each precision names the builder flags it sets, the oldest compute capability
with fast kernels for it, and whether it needs calibration images.  The
runtime never builds INT8 on its own: an INT8 engine exists only if someone
ran ``dfscan build-engine --precision int8 --calibrate DIR``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dfscan.trt.errors import PrecisionUnsupported, UnknownPrecision


@dataclass(frozen=True)
class Precision:
    name: str
    description: str
    builder_flags: tuple[str, ...]  # names of tensorrt.BuilderFlag members
    min_capability: tuple[int, int]
    needs_calibration: bool


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", "FP32 (TF32 where the GPU has it)", (), (5, 0), False),
        Precision("fp16", "FP16 kernels where faster, FP32 elsewhere", ("FP16",), (5, 3), False),
        Precision("int8", "INT8 with entropy calibration, FP16 fallback", ("INT8", "FP16"), (6, 1), True),
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
        raise UnknownPrecision(f"unknown precision {name!r}; known precisions: {', '.join(PRECISIONS)}") from None


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
