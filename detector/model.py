"""The detector: backbone features, a bidirectional LSTM over frames, a small classifier.

A 4-D batch (N, 3, H, W) is N sequences of one frame; a 5-D batch (N, T, 3, H, W)
is N sequences of T frames. Logits are in the order of :data:`CLASSES`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfscan.core.constants import DEFAULT_FRAMES
from dfscan.core.errors import first_line
from dfscan.detector.backbones import DEFAULT_BACKBONE, get_backbone
from dfscan.detector.errors import CheckpointError
from dfscan.trt.model_info import CLASSES, IMAGENET_MEAN, IMAGENET_STD, INPUT_SIZE

CHECKPOINT_FORMAT = 1
# DEFAULT_FRAMES (16): frames per video sequence, what ``dfscan train`` samples from a video and what
# an export records as ``frames`` when the checkpoint was not trained on videos.
TRAINED_ON = ("images", "videos")


@dataclass(frozen=True)
class DetectorConfig:
    """Everything needed to rebuild a detector from its checkpoint alone."""

    backbone: str = DEFAULT_BACKBONE
    num_classes: int = 2
    lstm_hidden: int = 512
    lstm_layers: int = 2
    dropout: float = 0.3
    fc_hidden: int = 256
    classes: tuple[str, ...] = CLASSES
    input_size: tuple[int, int] = INPUT_SIZE
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # What it was trained on: "whole-image" or "face-crop" (dfscan train --faces on); export writes it.
    input: str = "whole-image"
    # Images (sequences of one frame) or videos (sequences of ``frames`` sampled frames).
    trained_on: str = "images"
    frames: int = DEFAULT_FRAMES

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"checkpoint config has unknown keys {unknown}; was it written by a newer dfscan?")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)


class DeepfakeDetector(nn.Module):
    """Backbone -> 2-layer bidirectional LSTM -> Linear/ReLU/Dropout/Linear, as in the original project."""

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        num_classes: int = 2,
        lstm_hidden: int = 512,
        lstm_layers: int = 2,
        dropout: float = 0.3,
        backbone_weights: Path | None = None,
        *,
        fc_hidden: int = 256,
        classes: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__()
        spec = get_backbone(backbone)
        if classes is None:
            classes = CLASSES if num_classes == len(CLASSES) else tuple(f"class{i}" for i in range(num_classes))
        if len(classes) != num_classes:
            raise ValueError(f"{len(classes)} class names for num_classes={num_classes}")
        self.config = DetectorConfig(
            backbone=backbone,
            num_classes=num_classes,
            lstm_hidden=lstm_hidden,
            lstm_layers=lstm_layers,
            dropout=dropout,
            fc_hidden=fc_hidden,
            classes=tuple(classes),
        )
        self.backbone = spec.build(Path(backbone_weights) if backbone_weights is not None else None)
        self.lstm = nn.LSTM(
            spec.feature_dim,
            lstm_hidden,
            num_layers=lstm_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if lstm_layers > 1 else 0.0,
        )
        self.classifier = nn.Sequential(
            nn.Linear(2 * lstm_hidden, fc_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc_hidden, num_classes),
        )

    @classmethod
    def from_config(cls, config: DetectorConfig) -> DeepfakeDetector:
        model = cls(
            config.backbone,
            config.num_classes,
            config.lstm_hidden,
            config.lstm_layers,
            config.dropout,
            fc_hidden=config.fc_hidden,
            classes=config.classes,
        )
        model.config = config
        return model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            seq = self.backbone(x).unsqueeze(1)  # (N, 1, F)
        elif x.dim() == 5:
            n, t = x.shape[:2]
            seq = self.backbone(x.flatten(0, 1)).view(n, t, -1)  # (N, T, F)
        else:
            raise ValueError(f"expected (N, 3, H, W) or (N, T, 3, H, W) input, got shape {tuple(x.shape)}")
        out, _ = self.lstm(seq)  # (N, T, 2 * hidden); no h0 given, so the batch stays dynamic in ONNX
        return self.classifier(out.mean(dim=1))

    @property
    def architecture(self) -> str:
        c = self.config
        return f"DeepfakeDetector({c.backbone}, bilstm {c.lstm_layers}x{c.lstm_hidden}, fc {c.fc_hidden})"


def save_checkpoint(path: Path, model: DeepfakeDetector, extra: dict[str, Any] | None = None) -> Path:
    """Save weights and config so the model can be rebuilt from the file alone; ``extra`` must be plain data."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "format": CHECKPOINT_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": model.config.to_dict(),
        "extra": dict(extra or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(record, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: Path, *, backbone: str | None = None) -> tuple[DeepfakeDetector, dict[str, Any]]:
    """Rebuild a detector (in eval mode) from a checkpoint; returns ``(model, meta)``.

    ``meta`` holds ``config`` (a dict) and ``extra``. A bare state_dict (the original
    project saved one) needs ``backbone=``; the LSTM and head sizes are read from
    the tensors' shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises pickle, zip and runtime errors alike
        raise CheckpointError(f"can't read checkpoint {path}: {first_line(exc, None)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    if isinstance(obj.get("state_dict"), dict) and isinstance(obj.get("config"), dict):
        config = DetectorConfig.from_dict(obj["config"])
        state, extra = obj["state_dict"], dict(obj.get("extra") or {})
    else:
        state = obj.get("model_state_dict") or obj.get("state_dict") or obj
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{path} is neither a dfscan checkpoint nor a state_dict")
        # Weights saved from nn.DataParallel carry a "module." prefix.
        state = {k.removeprefix("module."): v for k, v in state.items()}
        if backbone is None:
            raise CheckpointError(
                f"{path} is a bare state_dict with no config; pass the backbone name it was built with"
            )
        config, extra = _infer_config(state, backbone, path), {}
    if backbone is not None and backbone != config.backbone:
        raise CheckpointError(f"{path} was built with backbone {config.backbone!r}, not {backbone!r}")
    model = DeepfakeDetector.from_config(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise CheckpointError(f"{path} does not fit a {model.architecture}: {lines[-1]}") from None
    model.eval()
    return model, {"config": config.to_dict(), "extra": extra}


def _infer_config(state: dict[str, torch.Tensor], backbone: str, path: Path) -> DetectorConfig:
    """Read LSTM and head sizes from the weights of a bare state_dict."""
    try:
        hidden = state["lstm.weight_hh_l0"].shape[1]
        prefix = "lstm.weight_hh_l"
        layers = 1 + max(int(k.removeprefix(prefix)) for k in state if k.startswith(prefix) and "_reverse" not in k)
        fc_hidden, num_classes = state["classifier.0.weight"].shape[0], state["classifier.3.weight"].shape[0]
    except (KeyError, ValueError, IndexError):
        raise CheckpointError(
            f"{path}: the state_dict has no lstm/classifier weights in dfscan's layout (lstm.*, classifier.0/3.*)"
        ) from None
    classes = CLASSES if num_classes == len(CLASSES) else tuple(f"class{i}" for i in range(num_classes))
    return DetectorConfig(
        backbone=backbone,
        num_classes=num_classes,
        lstm_hidden=hidden,
        lstm_layers=layers,
        fc_hidden=fc_hidden,
        classes=classes,
    )
