"""The detector: backbones, the model, ONNX export, and inspection of exported models.

``detector.info`` and ``detector.errors`` don't import torch, and neither does this
package: the torch-side names are loaded on first use, so a runtime that only
inspects models (``from detector import inspect_model``) never pays for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from detector.errors import (
    CheckpointError,
    DetectorError,
    ExportError,
    ExportMismatch,
    ModelError,
    ModelInputError,
    ModelNotFound,
    ModelOutputError,
    NotAnOnnxModel,
    SidecarError,
    SidecarMismatch,
    UnknownBackbone,
    WeightsError,
)
from detector.info import (
    CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INPUT_SIZE,
    ModelInfo,
    inspect_model,
    reexport_hint,
    sha256_file,
    write_model_info,
)

# Public names whose modules import torch, loaded lazily by __getattr__.
_LAZY = {
    "BACKBONES": "detector.backbones",
    "BackboneSpec": "detector.backbones",
    "get_backbone": "detector.backbones",
    "DeepfakeDetector": "detector.model",
    "DetectorConfig": "detector.model",
    "save_checkpoint": "detector.model",
    "load_checkpoint": "detector.model",
    "ExportResult": "detector.export",
    "export_onnx": "detector.export",
    "export_legacy_fixed_batch": "detector.export",
    "check_parity": "detector.export",
    # Training, evaluation and calibration (issue 5). The functions train/evaluate/calibrate are
    # reached through their modules (detector.train.train, ...): their names are the modules' own.
    "SynthError": "detector.synth",
    "SynthSummary": "detector.synth",
    "synthesize": "detector.synth",
    "DataError": "detector.data",
    "Splits": "detector.data",
    "find_splits": "detector.data",
    "TrainConfig": "detector.train",
    "TrainError": "detector.train",
    "TrainResult": "detector.train",
    "CalibrationError": "detector.calibrate",
    "CalibrationResult": "detector.calibrate",
    "fit_temperature": "detector.calibrate",
    "update_model_info": "detector.calibrate",
    "EvalResult": "detector.evaluate",
    "EvaluationError": "detector.evaluate",
    "compute_metrics": "detector.evaluate",
}

__all__ = [
    "CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INPUT_SIZE",
    "ModelInfo",
    "inspect_model",
    "reexport_hint",
    "sha256_file",
    "write_model_info",
    "CheckpointError",
    "DetectorError",
    "ExportError",
    "ExportMismatch",
    "ModelError",
    "ModelInputError",
    "ModelNotFound",
    "ModelOutputError",
    "NotAnOnnxModel",
    "SidecarError",
    "SidecarMismatch",
    "UnknownBackbone",
    "WeightsError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'detector' has no attribute {name!r}")
