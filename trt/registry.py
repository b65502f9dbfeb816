"""Runtimes are data: a table of specs looked up by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dfscan.trt.model_info import ModelInfo
from dfscan.trt.base import Runtime
from dfscan.trt.errors import RuntimeUnavailable, UnknownRuntime


@dataclass(frozen=True)
class RuntimeSpec:
    name: str
    description: str
    available: Callable[[], tuple[bool, str]]
    load: Callable[..., Runtime]


def _ort_available() -> tuple[bool, str]:
    from dfscan.trt import onnxruntime

    return onnxruntime.available()


def _ort_load(
    info: ModelInfo, *, intra_op_threads: int = 0, precision: str | None = None, engine_dir: Path | None = None
) -> Runtime:
    from dfscan.trt.onnxruntime import OnnxRuntime

    own = str(info.extra.get("precision", "fp32"))
    if precision is not None and precision != own:
        raise RuntimeUnavailable(
            f"ONNX Runtime runs the model in its own precision ({own}), not {precision}; for INT8 on the CPU "
            f"make a quantised model with `dfscan quantize`, for FP16/INT8 on a GPU use --runtime tensorrt"
        )
    return OnnxRuntime(info, intra_op_threads=intra_op_threads)


def _trt_available() -> tuple[bool, str]:
    from dfscan.trt import tensorrt

    return tensorrt.available()


def _trt_load(
    info: ModelInfo, *, intra_op_threads: int = 0, precision: str | None = None, engine_dir: Path | None = None
) -> Runtime:  # intra_op_threads is a CPU setting
    from dfscan.trt.tensorrt import TensorRTRuntime

    return TensorRTRuntime(info, precision=precision, engine_dir=engine_dir)


RUNTIMES: dict[str, RuntimeSpec] = {
    spec.name: spec
    for spec in (
        RuntimeSpec("onnxruntime", "ONNX Runtime on the CPU", _ort_available, _ort_load),
        RuntimeSpec(
            "tensorrt", "TensorRT engine on an NVIDIA GPU (built and cached per GPU type)", _trt_available, _trt_load
        ),
    )
}

# The order `auto` tries runtimes in: the fastest that can run here wins.
AUTO_ORDER: tuple[str, ...] = ("tensorrt", "onnxruntime")


def get_runtime_spec(name: str) -> RuntimeSpec:
    try:
        return RUNTIMES[name]
    except KeyError:
        known = ", ".join(["auto", *RUNTIMES])
        raise UnknownRuntime(f"unknown runtime {name!r}; known runtimes: {known}") from None


def resolve_runtime(name: str) -> RuntimeSpec:
    """The spec ``name`` means on this machine; ``auto`` picks the first available."""
    if name != "auto":
        spec = get_runtime_spec(name)
        ok, why = spec.available()
        if not ok:
            raise RuntimeUnavailable(f"runtime {name!r} can't run here: {why}")
        return spec
    reasons = []
    for candidate in AUTO_ORDER:
        spec = RUNTIMES.get(candidate)
        if spec is None:
            continue
        ok, why = spec.available()
        if ok:
            return spec
        reasons.append(f"{candidate}: {why}")
    raise RuntimeUnavailable("no runtime can run here (" + "; ".join(reasons) + ")")


def load_runtime(name: str, info: ModelInfo, **options) -> Runtime:
    return resolve_runtime(name).load(info, **options)
