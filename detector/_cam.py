"""Grad-CAM on the detector with Captum: the wrapper, the frozen model, peaks and overlays.

Captum's ``LayerGradCam`` hooks the last block of the backbone, takes the
gradient of the fake logit with respect to that block's output and weighs its
channels by it. Everything but that block is frozen and the input needs no
gradient, so the backward pass stops at the block: a heatmap costs one forward
pass plus the backward of the block and the head (LSTM, classifier), not a
full backward through the backbone.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from dfscan.core.errors import UnknownName
from dfscan.core.registry import Registry
from dfscan.detector.errors import DetectorError
from dfscan.detector.model import DeepfakeDetector

METHOD = "captum.LayerGradCam"


@dataclass(frozen=True)
class CamTarget:
    """Where Grad-CAM looks in one backbone: the modules of its last block, and the one whose output is hooked."""

    block: tuple[str, ...]
    hooked: str


class UnknownCamTarget(DetectorError, UnknownName):
    """No Grad-CAM target layer is known for the backbone."""


# The last block of each backbone of dfscan.detector.backbones (module names inside DeepfakeDetector).
CAM_TARGETS: Registry[CamTarget] = Registry(
    "backbone",
    UnknownCamTarget,
    message="no Grad-CAM target layer is known for {kind} {name!r}",
    entries={
        "resnext50_32x4d": CamTarget(("backbone.layer4",), "backbone.layer4"),
        "resnet18": CamTarget(("backbone.layer4",), "backbone.layer4"),
        "mobilenet_v3_small": CamTarget(("backbone.features.12",), "backbone.features.12"),
        # TinyTrunk: conv, BatchNorm, ReLU of the fifth stage.
        "tiny": CamTarget(("backbone.12", "backbone.13", "backbone.14"), "backbone.14"),
    },
)


class FramesAsBatch(nn.Module):
    """The detector seen through 4-D input: (N*T, 3, H, W) in, (N, classes) out.

    Captum (and pytorch-grad-cam, which treats 5-D input as volumes) attribute
    per row of a 4-D batch; here the ``frames`` consecutive rows of each
    sequence are folded back into (N, T, 3, H, W) before the model, so a video's
    frames go through the LSTM together while each frame gets its own heatmap.
    The last logits are kept, so the explained score costs no extra pass.
    """

    def __init__(self, model: DeepfakeDetector, frames: int = 1) -> None:
        super().__init__()
        self.model = model
        self.frames = frames
        self.last_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[0] % self.frames:
            raise ValueError(f"expected (N*{self.frames}, 3, H, W) input, got shape {tuple(x.shape)}")
        if self.frames == 1:
            out = self.model(x)
        else:
            out = self.model(x.view(x.shape[0] // self.frames, self.frames, *x.shape[1:]))
        self.last_logits = out.detach()
        return out


def freeze_all_but(model: nn.Module, block: tuple[str, ...]) -> None:
    """Only the target block keeps ``requires_grad``: the backward pass never goes below it."""
    modules = dict(model.named_modules())
    missing = [name for name in block if name not in modules]
    if missing:
        raise DetectorError(f"the model has no module {missing[0]!r} to explain with")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in block:
        for p in modules[name].parameters():
            p.requires_grad_(True)


class GradCam:
    """A frozen detector and Captum's LayerGradCam on the last block of its backbone."""

    def __init__(self, model: DeepfakeDetector, *, device: str = "cpu", frames: int = 1) -> None:
        from captum.attr import LayerGradCam

        backbone = model.config.backbone
        self.target = CAM_TARGETS.get(backbone)
        self.device = device
        self.model = model.to(device).eval()
        freeze_all_but(self.model, self.target.block)
        self.wrapper = FramesAsBatch(self.model, frames)
        layer = dict(self.wrapper.named_modules())["model." + self.target.hooked]
        self._cam = LayerGradCam(self.wrapper, layer)
        self.fake_index = list(model.config.classes).index("fake")

    @property
    def target_layer(self) -> str:
        return self.target.hooked

    def __call__(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps (N*T, h, w) at the target layer's resolution, each scaled to [0, 1], and the (N, classes) logits.

        The layer's grid is the heatmap's true resolution: upsampling it (the overlay does) adds no information,
        and the peak is a cell of that grid.
        """
        x = x.to(self.device)
        with _rnn_backward_in_eval(self.device):
            attr = self._cam.attribute(x, target=self.fake_index, relu_attributions=True)
        cams = attr.detach()[:, 0].float().cpu().numpy()
        peak = cams.reshape(len(cams), -1).max(axis=1)
        scale = np.where(peak > 0, peak, 1.0).reshape(-1, 1, 1)
        assert self.wrapper.last_logits is not None
        return np.clip(cams / scale, 0.0, 1.0), self.wrapper.last_logits.float().cpu().numpy()


@contextlib.contextmanager
def _rnn_backward_in_eval(device: str) -> Iterator[None]:
    """cuDNN's LSTM refuses backward in eval mode; the native kernel doesn't (CPU needs nothing)."""
    if device.startswith("cuda"):
        with torch.backends.cudnn.flags(enabled=False):
            yield
    else:
        yield


def peak_in_original(cam: np.ndarray, width: int, height: int) -> tuple[int, int]:
    """The centre of the heatmap's hottest cell, in the original image's pixels (x, y).

    The decoder resizes the whole image to the input size (no crop), so a cell of the
    layer's grid maps to the original by a plain scale.
    """
    iy, ix = np.unravel_index(int(np.argmax(cam)), cam.shape)
    h, w = cam.shape
    x = min(width - 1, int((ix + 0.5) * width / w))
    y = min(height - 1, int((iy + 0.5) * height / h))
    return x, y


def _colormap(v: np.ndarray) -> np.ndarray:
    """A blue-cyan-yellow-red ramp (like 'jet') for values in [0, 1]: (..., 3) uint8."""
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def overlay_png(image: Image.Image, cam: np.ndarray, peak: tuple[int, int], *, px: int = 160,
                max_bytes: int = 64 * 1024) -> bytes:
    """The image shrunk to ``px`` with the heatmap blended over it and the peak ringed: a PNG under ``max_bytes``."""
    while True:
        thumb = image.convert("RGB")
        thumb.thumbnail((px, px), Image.Resampling.LANCZOS)
        heat = Image.fromarray((cam * 255).astype(np.uint8), "L").resize(thumb.size, Image.Resampling.BILINEAR)
        level = np.asarray(heat, dtype=np.float32) / 255.0
        alpha = (0.15 + 0.45 * level)[..., None]
        mixed = np.asarray(thumb, dtype=np.float32) * (1 - alpha) + _colormap(level).astype(np.float32) * alpha
        out = Image.fromarray(mixed.clip(0, 255).astype(np.uint8), "RGB")
        sx, sy = thumb.size[0] / image.size[0], thumb.size[1] / image.size[1]
        cx, cy, r = peak[0] * sx, peak[1] * sy, max(3.0, px / 24)
        draw = ImageDraw.Draw(out)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(255, 255, 255), width=2)
        buf = io.BytesIO()
        out.save(buf, format="PNG", optimize=True)
        if buf.tell() <= max_bytes or px <= 32:
            return buf.getvalue()
        px = int(px * 0.75)
