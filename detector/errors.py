"""Errors raised while building, exporting and inspecting the detector model.

Library code raises these; only the CLI turns them into messages and exit codes.
Messages are one line and say what to do next.
"""

from __future__ import annotations

from dfscan.core.errors import UnknownName


class DetectorError(Exception):
    """Base class for every error of the ``detector`` package."""


class UnknownBackbone(DetectorError, UnknownName):
    """A backbone name that is not in the table; the message lists the known ones."""


class WeightsError(DetectorError):
    """A local backbone weights file is missing, unreadable or for another backbone."""


class CheckpointError(DetectorError):
    """A detector checkpoint can't be read or doesn't describe a detector."""


class ExportError(DetectorError):
    """The ONNX export itself failed."""


class UnknownExporter(ExportError, UnknownName):
    """An exporter name that is not in the table; the message lists the known ones."""


class ExportMismatch(ExportError):
    """ONNX Runtime and PyTorch disagree on the same batch by more than the tolerance."""

    def __init__(self, message: str, *, max_abs_diff: float, atol: float) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff
        self.atol = atol
