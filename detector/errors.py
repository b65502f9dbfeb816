"""Errors raised while building, exporting and inspecting the detector model.

Library code raises these; only the CLI turns them into messages and exit codes.
Messages are one line and say what to do next.
"""

from __future__ import annotations


class DetectorError(Exception):
    """Base class for every error of the ``detector`` package."""


class UnknownBackbone(DetectorError, LookupError):
    """A backbone name that is not in the table; the message lists the known ones."""


class WeightsError(DetectorError):
    """A local backbone weights file is missing, unreadable or for another backbone."""


class CheckpointError(DetectorError):
    """A detector checkpoint can't be read or doesn't describe a detector."""


class ExportError(DetectorError):
    """The ONNX export itself failed."""


class ExportMismatch(ExportError):
    """ONNX Runtime and PyTorch disagree on the same batch by more than the tolerance."""

    def __init__(self, message: str, *, max_abs_diff: float, atol: float) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff
        self.atol = atol


class ModelError(DetectorError):
    """An ONNX model file that dfscan can't use (base class of the inspection errors)."""


class ModelNotFound(ModelError):
    """The model path does not exist."""


class NotAnOnnxModel(ModelError):
    """The file exists but is not an ONNX model."""


class ModelInputError(ModelError):
    """The graph's input is not one float32 N x 3 x H x W tensor."""


class ModelOutputError(ModelError):
    """The graph's output is not N x (number of classes) logits."""


class SidecarError(ModelError):
    """``model_info.json`` next to the model can't be read or has wrong types."""


class SidecarMismatch(SidecarError):
    """``model_info.json`` describes another model file (its sha256 differs)."""
