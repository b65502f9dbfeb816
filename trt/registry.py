"""Runtimes are data: a table of specs looked up by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dfscan.core.registry import Registry
from dfscan.trt.base import Runtime
from dfscan.trt.model_info import VIDEO_PROGRAM_KEY, ModelInfo
from dfscan.trt.errors import RuntimeUnavailable, UnknownRuntime


@dataclass(frozen=True)
class RuntimeSpec:
    name: str
    description: str
    available: Callable[[], tuple[bool, str]]
    load: Callable[..., Runtime]
    # Whether ``auto`` may pick it here for this model (None: when ``available``); a runtime that
    # runs everywhere but only pays on a GPU says so here.
    auto_available: Callable[[ModelInfo | None], tuple[bool, str]] | None = None

    def usable_by_auto(self, info: ModelInfo | None) -> tuple[bool, str]:
        # A runtime with its own rule for `auto` checks everything it needs there, cheapest first
        # (the torch runtime must not import torch on a machine without a GPU).
        if self.auto_available is not None:
            return self.auto_available(info)
        return self.available()


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


def _torch_available() -> tuple[bool, str]:
    from dfscan.trt import pytorch

    return pytorch.available()


def _torch_auto(info: ModelInfo | None) -> tuple[bool, str]:
    """``auto`` takes PyTorch only on CUDA (on the CPU ONNX Runtime is faster) and only with a recorded .pt2."""
    from dfscan.trt import pytorch

    if info is not None and not isinstance(info.extra.get(pytorch.PROGRAM_KEY), dict):
        return False, f"{info.path.name} has no PyTorch export (model.pt2); re-export with `dfscan export`"
    # One runtime scores both graphs: a model with a video graph needs its video program too.
    if info is not None and info.video_model is not None and not isinstance(info.extra.get(VIDEO_PROGRAM_KEY), dict):
        return False, f"{info.path.name} has no PyTorch export of its video graph (model.video.pt2); re-export"
    ok, why = pytorch.cuda_status()
    if not ok:
        return False, f"not on the CPU (ONNX Runtime is faster there; no CUDA: {why})"
    return True, ""


def _torch_load(
    info: ModelInfo, *, intra_op_threads: int = 0, precision: str | None = None, engine_dir: Path | None = None
) -> Runtime:  # engine_dir is a TensorRT setting
    from dfscan.trt.pytorch import TorchRuntime

    return TorchRuntime(info, precision=precision, threads=intra_op_threads)


RUNTIMES: Registry[RuntimeSpec] = Registry(
    "runtime",
    UnknownRuntime,
    extra_names=("auto",),
    factory=lambda spec: spec.load,
    entries=(
        RuntimeSpec("onnxruntime", "ONNX Runtime on the CPU", _ort_available, _ort_load),
        RuntimeSpec(
            "tensorrt", "TensorRT engine on an NVIDIA GPU (built and cached per GPU type)", _trt_available, _trt_load
        ),
        RuntimeSpec(
            "torch", "PyTorch (torch.export program): CUDA in FP16/BF16, or the CPU in FP32", _torch_available,
            _torch_load, _torch_auto,
        ),
    ),
)

# The order `auto` tries runtimes in: the fastest that can run here wins.
AUTO_ORDER: tuple[str, ...] = ("tensorrt", "torch", "onnxruntime")


def get_runtime_spec(name: str) -> RuntimeSpec:
    return RUNTIMES.get(name)


def resolve_runtime(name: str, info: ModelInfo | None = None) -> RuntimeSpec:
    """The spec ``name`` means on this machine (for the model ``info`` if given); ``auto`` picks the first usable."""
    if name != "auto":
        spec = get_runtime_spec(name)
        ok, why = spec.available()
        if not ok:
            raise RuntimeUnavailable(f"runtime {name!r} can't run here: {why}")
        return spec
    reasons = []
    for candidate in (c for c in AUTO_ORDER if c in RUNTIMES):
        spec = RUNTIMES[candidate]
        ok, why = spec.usable_by_auto(info)
        if ok:
            return spec
        reasons.append(f"{candidate}: {why}")
    raise RuntimeUnavailable("no runtime can run here (" + "; ".join(reasons) + ")")


def load_runtime(name: str, info: ModelInfo, **options) -> Runtime:
    return resolve_runtime(name, info).load(info, **options)


def load_graph_runtime(image_runtime: Runtime | None, graph: ModelInfo, **options) -> Runtime:
    """A runtime for another graph of the model (the video graph) on the runtime the image graph got.

    ``auto`` is resolved once, for the image graph (its rule looks at the whole model folder); every
    other graph runs on that same runtime, never on a second one beside it (ONNX Runtime where there is
    no image runtime).
    """
    name = image_runtime.name if image_runtime is not None else "onnxruntime"
    return get_runtime_spec(name).load(graph, **options)
