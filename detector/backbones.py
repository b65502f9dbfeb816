"""Backbones are data: a table of specs that build a feature trunk, looked up by name.

A trunk maps (N, 3, H, W) images to (N, feature_dim) features: the network's own
global pool is kept, its classification head is dropped. Weights are never
downloaded; a local torchvision checkpoint may be given instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dfscan.core.errors import first_line
from dfscan.core.registry import Registry
from dfscan.detector.errors import UnknownBackbone, WeightsError

DEFAULT_BACKBONE = "resnext50_32x4d"

# Keys a full checkpoint may keep its state_dict under (torchvision, Lightning, ours).
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone: its name, the size of its features and how to build its trunk."""

    name: str
    feature_dim: int
    build: Callable[[Path | None], nn.Module]
    description: str = ""


def _torchvision_trunk(factory: str, head: str) -> Callable[[Path | None], nn.Module]:
    """A builder for torchvision model ``factory`` whose attribute ``head`` is the classifier."""

    def build(weights_path: Path | None = None) -> nn.Module:
        import torchvision.models as tvm

        net = getattr(tvm, factory)(weights=None)
        if weights_path is not None:
            load_backbone_weights(net, weights_path, head_prefixes=(f"{head}.",), name=factory)
        setattr(net, head, nn.Identity())
        return net

    return build


class TinyTrunk(nn.Sequential):
    """Five strided conv/BN/ReLU stages and a global pool: exports and runs in milliseconds on CPU.

    Only for tests and demos; it has no pretrained weights and detects nothing.
    """

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 64, 128)) -> None:
        layers: list[nn.Module] = []
        in_ch = 3
        for out_ch in widths:
            layers += [
                nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
            in_ch = out_ch
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
        super().__init__(*layers)


def _build_tiny(weights_path: Path | None = None) -> nn.Module:
    net = TinyTrunk()
    if weights_path is not None:
        load_backbone_weights(net, weights_path, head_prefixes=(), name="tiny")
    return net


BACKBONES: Registry[BackboneSpec] = Registry(
    "backbone",
    UnknownBackbone,
    factory=lambda spec: spec.build,
    entries=(
        BackboneSpec("resnext50_32x4d", 2048, _torchvision_trunk("resnext50_32x4d", "fc"), "the original project's"),
        BackboneSpec("resnet18", 512, _torchvision_trunk("resnet18", "fc"), "small torchvision ResNet"),
        BackboneSpec(
            "mobilenet_v3_small", 576, _torchvision_trunk("mobilenet_v3_small", "classifier"), "fast on CPU"
        ),
        BackboneSpec("tiny", 128, _build_tiny, "in-house 5-stage CNN for tests and demos"),
    ),
)


def get_backbone(name: str) -> BackboneSpec:
    """The spec called ``name``; an unknown name raises :class:`UnknownBackbone` listing the known ones."""
    return BACKBONES.get(name)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a local checkpoint: a bare state_dict or a dict holding one."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"backbone weights file {path} does not exist; give the path of a local .pth file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises pickle, zip and runtime errors alike
        raise WeightsError(f"can't read backbone weights {path}: {first_line(exc, limit=None)}") from None
    if isinstance(obj, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} holds no state_dict of tensors")
    # Weights saved from nn.DataParallel carry a "module." prefix.
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_backbone_weights(net: nn.Module, path: Path, *, head_prefixes: tuple[str, ...], name: str) -> None:
    """Load ``path`` into ``net``; only keys under ``head_prefixes`` (the classifier) may differ."""
    def in_head(key: str) -> bool:
        return bool(head_prefixes) and key.startswith(head_prefixes)

    # The head is dropped anyway; a fine-tuned head of another size must not fail the load.
    state = {k: v for k, v in read_state_dict(path).items() if not in_head(k)}
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even with strict=False
        first = str(exc).strip().splitlines()[-1].strip()
        raise WeightsError(f"{path} does not fit backbone {name!r}: {first}") from None
    missing = [k for k in result.missing_keys if not in_head(k)]
    unexpected = result.unexpected_keys
    if missing or unexpected:
        raise WeightsError(
            f"{path} does not fit backbone {name!r}: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:2]}); is it a checkpoint of {name}?"
        )
