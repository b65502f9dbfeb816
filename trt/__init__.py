"""Inference runtimes behind one interface: ONNX Runtime (CPU), TensorRT (GPU) and PyTorch (CUDA or CPU)."""

from dfscan.trt.base import Runtime, run_batched, softmax
from dfscan.trt.errors import (
    Int8CalibrationError,
    EngineBuildFailed,
    EngineIncompatible,
    Fp16ConversionError,
    InferenceFailed,
    ModelRejected,
    PrecisionUnsupported,
    RuntimeUnavailable,
    UnknownPrecision,
    UnknownRuntime,
)
from dfscan.trt.model_info import ModelFolder, ModelInfo, inspect_model, load_model_folder
from dfscan.trt.registry import RUNTIMES, RuntimeSpec, get_runtime_spec, load_runtime, resolve_runtime

__all__ = [
    "RUNTIMES",
    "Int8CalibrationError",
    "EngineBuildFailed",
    "EngineIncompatible",
    "Fp16ConversionError",
    "PrecisionUnsupported",
    "UnknownPrecision",
    "InferenceFailed",
    "ModelFolder",
    "ModelInfo",
    "ModelRejected",
    "Runtime",
    "RuntimeSpec",
    "RuntimeUnavailable",
    "UnknownRuntime",
    "get_runtime_spec",
    "inspect_model",
    "load_model_folder",
    "load_runtime",
    "resolve_runtime",
    "run_batched",
    "softmax",
]
