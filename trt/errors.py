"""Errors raised by inference runtimes."""

from dfscan.core.errors import UnknownName


class RuntimeErrorBase(Exception):
    """Base class for runtime errors."""


class UnknownRuntime(RuntimeErrorBase, UnknownName):
    """No runtime of that name is registered."""


class RuntimeUnavailable(RuntimeErrorBase):
    """The runtime exists but can't run on this machine (package or GPU missing)."""


class ModelRejected(RuntimeErrorBase):
    """The model loaded but failed the start-up probe; the scan must not start."""


class InferenceFailed(RuntimeErrorBase):
    """A batch failed inside the runtime."""


class UnknownPrecision(RuntimeErrorBase, UnknownName):
    """No precision of that name; the message lists the known ones."""


class PrecisionUnsupported(RuntimeErrorBase):
    """The GPU has no fast kernels for the precision asked for."""


class EngineBuildFailed(RuntimeErrorBase):
    """TensorRT could not parse the ONNX file or build an engine from it."""


class EngineIncompatible(RuntimeErrorBase):
    """A serialized engine was built for another GPU, TensorRT version or model."""


class Int8CalibrationError(RuntimeErrorBase):
    """INT8 calibration has no usable images (or no calibration cache)."""


class ModelError(RuntimeErrorBase):
    """An ONNX model file that dfscan can't use (base class of the inspection errors)."""


class ModelNotFound(ModelError):
    """The model path does not exist."""


class NotAnOnnxModel(ModelError):
    """The file exists but is not an ONNX model."""


class ModelInputError(ModelError):
    """The graph's input is not one float32 N x 3 x H x W tensor."""


class ModelOutputError(ModelError):
    """The graph's output is not N x (number of classes) logits."""


class Fp16ConversionError(ModelError):
    """The model can't be converted to FP16 (not an FP32 model, or the converter failed)."""


class SidecarError(ModelError):
    """``model_info.json`` next to the model can't be read or has wrong types."""


class SidecarMismatch(SidecarError):
    """``model_info.json`` describes another model file (its sha256 differs)."""
