"""Errors raised by inference runtimes."""


class RuntimeErrorBase(Exception):
    """Base class for runtime errors."""


class UnknownRuntime(RuntimeErrorBase):
    """No runtime of that name is registered."""


class RuntimeUnavailable(RuntimeErrorBase):
    """The runtime exists but can't run on this machine (package or GPU missing)."""


class ModelRejected(RuntimeErrorBase):
    """The model loaded but failed the start-up probe; the scan must not start."""


class InferenceFailed(RuntimeErrorBase):
    """A batch failed inside the runtime."""


class UnknownPrecision(RuntimeErrorBase):
    """No precision of that name; the message lists the known ones."""


class PrecisionUnsupported(RuntimeErrorBase):
    """The GPU has no fast kernels for the precision asked for."""


class EngineBuildFailed(RuntimeErrorBase):
    """TensorRT could not parse the ONNX file or build an engine from it."""


class EngineIncompatible(RuntimeErrorBase):
    """A serialized engine was built for another GPU, TensorRT version or model."""


class CalibrationError(RuntimeErrorBase):
    """INT8 calibration has no usable images (or no calibration cache)."""
