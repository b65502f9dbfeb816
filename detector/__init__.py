"""The detector: backbones, the model, training, ONNX export, evaluation and calibration.

The description of an exported model (``model_info.json``, ``inspect_model``)
lives below this package, in ``dfscan.trt.model_info``: runtimes read it and
must not depend on the training code. This package does not import torch
itself: the torch-side names are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from dfscan.detector.errors import (
    CheckpointError,
    DetectorError,
    ExportError,
    ExportMismatch,
    UnknownBackbone,
    WeightsError,
)

# Public names whose modules import torch, loaded lazily by __getattr__.
_LAZY = {
    "BACKBONES": "dfscan.detector.backbones",
    "BackboneSpec": "dfscan.detector.backbones",
    "get_backbone": "dfscan.detector.backbones",
    "DeepfakeDetector": "dfscan.detector.model",
    "DetectorConfig": "dfscan.detector.model",
    "save_checkpoint": "dfscan.detector.model",
    "load_checkpoint": "dfscan.detector.model",
    "ExportResult": "dfscan.detector.export",
    "export_onnx": "dfscan.detector.export",
    "export_legacy_fixed_batch": "dfscan.detector.export",
    "check_parity": "dfscan.detector.export",
    # Training, evaluation and calibration (issue 5). The functions train/evaluate/calibrate are
    # reached through their modules (detector.train.train, ...): their names are the modules' own.
    "SynthError": "dfscan.detector.synth",
    "SynthSummary": "dfscan.detector.synth",
    "synthesize": "dfscan.detector.synth",
    "DataError": "dfscan.detector.data",
    "Splits": "dfscan.detector.data",
    "find_splits": "dfscan.detector.data",
    "TrainConfig": "dfscan.detector.train",
    "TrainError": "dfscan.detector.train",
    "TrainResult": "dfscan.detector.train",
    "ScoreCalibrationError": "dfscan.detector.calibrate",
    "CalibrationResult": "dfscan.detector.calibrate",
    "fit_temperature": "dfscan.detector.calibrate",
    "update_model_info": "dfscan.detector.calibrate",
    "EvalResult": "dfscan.detector.evaluate",
    "EvaluationError": "dfscan.detector.evaluate",
    "compute_metrics": "dfscan.detector.evaluate",
}

__all__ = [
    "CheckpointError",
    "DetectorError",
    "ExportError",
    "ExportMismatch",
    "UnknownBackbone",
    "WeightsError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dfscan.detector' has no attribute {name!r}")
