"""Synthetic images whose fake signal sits in a known square, and tiny detectors trained on them.

Two signals in two squares: a red tint in square A (top left) and a blue
tint in square B (bottom right). A detector trained on one signal sees
the other in half of its images of both classes, so it learns to ignore it.
Shown an image with both signals, each detector's heatmap must point at its own
square: the heatmap follows the model, not whatever stands out in the image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 64
# x0, y0, x1, y1 (exclusive) in pixels of the 64x64 image. The tiny backbone's last block is a 7x7 grid at
# the 224x224 input, so a heatmap's peak is a cell centre (4.6, 13.7, 22.9, 32, ... 59.4 px): each square
# holds two of them in each direction, and they are 9 px from the edges (zero padding makes edges loud).
SQUARE_A = (9, 9, 28, 28)
SQUARE_B = (37, 37, 55, 55)
SIGNALS = {"red": SQUARE_A, "blue": SQUARE_B}


def _background(rng: np.random.Generator) -> np.ndarray:
    """Smooth grey-ish blotches plus fine noise: (64, 64, 3) float, texture everywhere."""
    coarse = rng.uniform(70, 170, size=(8, 8, 3))
    coarse = coarse.mean(axis=2, keepdims=True) * 0.8 + coarse * 0.2  # mostly grey: red stays a signal
    img = np.asarray(Image.fromarray(coarse.astype(np.uint8), "RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC),
                     dtype=np.float32)
    return img + rng.normal(0, 6, img.shape)


def _add(img: np.ndarray, signal: str) -> None:
    x0, y0, x1, y1 = SIGNALS[signal]
    channel = 0 if signal == "red" else 2
    img[y0:y1, x0:x1, :] -= 35
    img[y0:y1, x0:x1, channel] += 115


def make_image(rng: np.random.Generator, signals: tuple[str, ...]) -> Image.Image:
    img = _background(rng)
    for s in signals:
        _add(img, s)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def training_set(folder: Path, signal: str, n: int, seed: int) -> list[tuple[Path, int]]:
    """``n`` PNGs, half fake (with ``signal``); the other signal is in half of each class. Returns (path, label)."""
    other = next(s for s in SIGNALS if s != signal)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        label = i % 2
        signals = ((signal,) if label else ()) + ((other,) if rng.random() < 0.5 else ())
        path = folder / f"train_{signal}_{i:04d}.png"
        make_image(rng, signals).save(path)
        out.append((path, label))
    return out


def both_signals_set(folder: Path, n: int, seed: int) -> list[Path]:
    """``n`` PNGs carrying both signals: fake to either detector."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"both_{i:03d}.png"
        make_image(rng, ("red", "blue")).save(path)
        paths.append(path)
    return paths


def train_detector(items: list[tuple[Path, int]], out: Path, *, epochs: int = 2, seed: int = 0) -> Path:
    """Train a tiny detector on ``items`` (decoded by the scanner's own decoder); returns its checkpoint."""
    import torch

    from dfscan.detector.model import DeepfakeDetector, save_checkpoint
    from dfscan.workers.images.decode import Preprocess, decode_one

    pre = Preprocess()
    x = torch.from_numpy(np.stack([decode_one(p.read_bytes(), pre) for p, _ in items]))
    y = torch.tensor([label for _, label in items])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DeepfakeDetector("tiny", lstm_hidden=32, dropout=0.0)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(x)).split(8):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                loss.backward()
                opt.step()
        # Few steps leave BatchNorm's running statistics far from the data's: measure them exactly instead.
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.reset_running_stats()
                    m.momentum = None  # a cumulative average over this one pass
            model(x)
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.momentum = 0.1
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    return save_checkpoint(out, model, {"purpose": "tests: pointing game", "train_accuracy": accuracy})


def inside(x: int, y: int, square: tuple[int, int, int, int], scale: float = 1.0) -> bool:
    x0, y0, x1, y1 = (v * scale for v in square)
    return x0 <= x < x1 and y0 <= y < y1
