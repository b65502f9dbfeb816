"""A labelled sample archive for tests and the demo: procedural "real" images and simulated "fakes".

**This is not a deepfake data set.** The "fakes" are real images passed through
a simulator of one trace that generator networks leave: their up-sampling
layers. A picture is shrunk, then enlarged again by transposed convolution (a
stride-2 kernel whose taps overlap unevenly: the checkerboard pattern) or by
nearest-neighbour up-sampling followed by smoothing (blocks, then blur). Both
leave periodic peaks in the image's spectrum, as GAN images show, and remove
the sensor noise a camera adds at full resolution. Both classes are then
JPEG re-compressed at random qualities, so compression is no shortcut.

Each fake is made from the same picture as one real image and lands in the same
split, so content can't tell the classes apart: only the traces can. A model
trained here knows this simulator and nothing about real deepfakes.

The layout is that of the "140k Real and Fake Faces" data set
(``train|valid|test/real|fake``) or plain ``real/`` and ``fake/`` folders.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dfscan.core.errors import UnknownName
from dfscan.core.registry import Registry
from dfscan.detector.errors import DetectorError

NOTICE = (
    "Synthetic sample archive written by `dfscan synth`: procedural images and 'fakes' made from them by a "
    "simulator of generator up-sampling artefacts. It is NOT a deepfake data set; a model trained on it only "
    "knows this simulator."
)
SPLITS = (("train", 0.70), ("valid", 0.15), ("test", 0.15))
LAYOUTS = ("140k", "flat")
MANIFEST_NAME = "synth.json"


class SynthError(DetectorError):
    """The sample archive can't be written as asked."""


class UnknownSynthName(SynthError, UnknownName):
    """An up-sampler or video format that is not in its table; the message lists the known ones."""


# ---------------------------------------------------------------- real images


def _procedural(rng: np.random.Generator, size: int) -> np.ndarray:
    """A picture with structure at every scale: gradient, shapes, texture, lens blur, sensor noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    angle = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle), 0, 1)[..., None]
    base = c0 * (1 - t) + c1 * t
    im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(rng.integers(4, 12)):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * size
        w, h = rng.uniform(0.08, 0.6, 2) * size
        if rng.random() < 0.6:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            pts = [(float(x0 + rng.uniform(0, w)), float(y0 + rng.uniform(0, h))) for _ in range(rng.integers(3, 7))]
            draw.polygon(pts, fill=colour)
    arr = np.asarray(im, dtype=np.float32)
    # Texture: a few oriented sinusoids of moderate frequency, different per channel.
    for _ in range(rng.integers(1, 4)):
        freq = rng.uniform(3, 24)
        theta = rng.uniform(0, np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)) + phase)
        arr += wave[..., None] * rng.uniform(2, 14, 3)
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    arr = np.asarray(im, dtype=np.float32)
    arr += rng.normal(0, rng.uniform(2.0, 6.0), arr.shape)  # sensor noise: white, at full resolution
    return np.clip(arr, 0, 255).astype(np.uint8)


def _package_images() -> list[np.ndarray]:
    """Photographs that ship inside installed packages (scikit-learn's two sample images)."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        raise SynthError("source 'packages' needs scikit-learn's sample images; pip install scikit-learn") from None
    return [np.asarray(img, dtype=np.uint8) for img in load_sample_images().images]


def _crop_of(photos: list[np.ndarray]) -> Callable[[np.random.Generator, int], np.ndarray]:
    def make(rng: np.random.Generator, size: int) -> np.ndarray:
        photo = photos[int(rng.integers(len(photos)))]
        h, w = photo.shape[:2]
        side = int(rng.integers(size // 2, min(h, w)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        arr = np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32)
        arr += rng.normal(0, rng.uniform(1.5, 4.0), arr.shape)
        return np.clip(arr, 0, 255).astype(np.uint8)

    return make


# ------------------------------------------------------ up-sampling simulators


def _transposed_conv(rng: np.random.Generator, low: np.ndarray, factor: int) -> np.ndarray:
    """Zero-insertion by ``factor`` then a separable 3-tap kernel [w, 1, w].

    With w != 0.5 the output phases get unequal gains (1 vs 2w per axis): the
    checkerboard of a transposed convolution whose kernel is not a multiple of its stride.
    """
    # |w - 0.5| sets the strength: 0.04-0.10 gives an 8-20 % ripple before JPEG, faint to the eye.
    w = 0.5 + rng.choice([-1.0, 1.0]) * rng.uniform(0.04, 0.10)
    h, wd, c = low.shape
    up = np.zeros((h * factor, wd * factor, c), dtype=np.float32)
    up[::factor, ::factor] = low
    taps = np.array([w, 1.0, w], dtype=np.float32)
    # The (1 + 2w) / 2 per axis is the kernel's mean gain over both phases (factor 2).
    taps *= factor / (1.0 + 2.0 * w) if factor == 2 else 1.0
    for axis in (0, 1):
        padded = np.pad(up, [(1, 1) if a == axis else (0, 0) for a in range(3)], mode="edge")
        n = up.shape[axis]
        up = sum(taps[k] * np.take(padded, range(k, k + n), axis=axis) for k in range(3))
    if factor != 2:  # longer strides: fill the remaining holes by a box filter
        up = np.asarray(Image.fromarray(np.clip(up, 0, 255).astype(np.uint8)).filter(ImageFilter.BoxBlur(1)))
    return up


def _nearest_smooth(rng: np.random.Generator, low: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour up-sampling, then a light blur: blocks softened into a periodic ripple."""
    up = np.repeat(np.repeat(low, factor, axis=0), factor, axis=1)
    im = Image.fromarray(np.clip(up, 0, 255).astype(np.uint8), "RGB")
    return np.asarray(im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.25, 0.5)))), dtype=np.float32)


@dataclass(frozen=True)
class Upsampler:
    """One simulated generator up-sampling layer."""

    name: str
    run: Callable[[np.random.Generator, np.ndarray, int], np.ndarray]
    description: str


UPSAMPLERS: Registry[Upsampler] = Registry(
    "up-sampler",
    UnknownSynthName,
    message="unknown {kind} {name!r}; known: {known}",
    factory=lambda u: u.run,
    entries=(
        Upsampler("transposed_conv", _transposed_conv, "zero insertion + uneven 3-tap kernel (checkerboard)"),
        Upsampler("nearest_smooth", _nearest_smooth, "nearest neighbour + Gaussian smoothing (blocks)"),
    ),
)


def simulate_fake(rng: np.random.Generator, real: np.ndarray, method: str | None = None) -> tuple[np.ndarray, str]:
    """``real`` shrunk by 2 and re-enlarged by a simulated up-sampling layer; returns (image, method)."""
    name = method or str(rng.choice(sorted(UPSAMPLERS)))
    upsampler = UPSAMPLERS.get(name)
    h, w = real.shape[:2]
    factor = 2
    low = np.asarray(Image.fromarray(real).resize((w // factor, h // factor), Image.Resampling.BOX), dtype=np.float32)
    # A generator synthesises its own fine texture (StyleGAN's per-layer noise inputs), but at the
    # low resolution's scale: the up-sampling layer then imprints its pattern on it too.
    low = low + rng.normal(0, rng.uniform(4.0, 8.0), low.shape)
    up = upsampler.run(rng, low, factor)
    return np.clip(up[:h, :w], 0, 255).astype(np.uint8), name


def jpeg(arr: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


# ----------------------------------------------------------------- the archive

SOURCES = ("procedural", "packages")


class ArchiveSummary:
    """``total`` and ``to_dict`` of an archive's summary: a frozen dataclass with ``out`` and ``counts``."""

    out: Path
    counts: dict[str, dict[str, int]]

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def to_dict(self) -> dict:
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}  # type: ignore[call-overload]
        data["out"] = str(self.out)
        data["total"] = self.total
        return data


@dataclass(frozen=True)
class SynthSummary(ArchiveSummary):
    """What :func:`synthesize` wrote: counts per split and class, and how."""

    out: Path
    layout: str
    source: str
    size: int
    seed: int
    quality: tuple[int, int]
    counts: dict[str, dict[str, int]]
    upsamplers: tuple[str, ...] = tuple(sorted(UPSAMPLERS))
    notice: str = NOTICE


def synthesize(
    out: Path,
    n: int,
    *,
    layout: str = "140k",
    source: str = "procedural",
    size: int = 256,
    seed: int = 0,
    quality: tuple[int, int] = (70, 95),
    upsamplers: tuple[str, ...] | None = None,
    progress: bool = False,
) -> SynthSummary:
    """Write ``n`` images (half real, half fake, in pairs of the same picture) under ``out``.

    ``layout`` "140k" puts each pair in train/valid/test (70/15/15 of the pairs),
    "flat" writes only ``real/`` and ``fake/``. ``upsamplers`` restricts the simulators
    used (default: all of :data:`UPSAMPLERS`, drawn at random). The same arguments give the same files.
    """
    if source not in SOURCES:
        raise SynthError(f"unknown source {source!r}; known sources: {', '.join(SOURCES)}")
    lo, hi = quality
    if not 1 <= lo <= hi <= 100:
        raise SynthError(f"JPEG quality range must satisfy 1 <= low <= high <= 100, got {lo}-{hi}")
    out = Path(out)
    methods = check_archive(out, n, layout, size, upsamplers)
    make_real = _procedural if source == "procedural" else _crop_of(_package_images())

    pairs = n // 2
    if layout == "140k":
        split_of = _assign_splits(pairs, np.random.default_rng([seed, 1]))
    else:
        split_of = [""] * pairs
    counts: dict[str, dict[str, int]] = {}
    bar = _bar(pairs, progress)
    for i in range(pairs):
        rng = np.random.default_rng([seed, 2, i])
        base = make_real(rng, size)
        fake, method = simulate_fake(rng, base, methods[int(rng.integers(len(methods)))])
        folder = out / split_of[i] if split_of[i] else out
        for label, arr in (("real", base), ("fake", fake)):
            (folder / label).mkdir(parents=True, exist_ok=True)
            q = int(rng.integers(lo, hi + 1))
            name = f"{i:06d}.jpg" if label == "real" else f"{i:06d}_{method}.jpg"
            (folder / label / name).write_bytes(jpeg(arr, q))
            split_counts = counts.setdefault(split_of[i] or "all", {"real": 0, "fake": 0})
            split_counts[label] += 1
        bar.update(1)
    bar.close()
    summary = SynthSummary(out, layout, source, size, seed, (lo, hi), counts, methods)
    (out / MANIFEST_NAME).write_text(json.dumps(summary.to_dict(), indent=2) + "\n", encoding="utf-8")
    (out / "README.txt").write_text(NOTICE + "\n", encoding="utf-8")
    return summary


def check_archive(out: Path, n: int, layout: str, size: int, upsamplers: tuple[str, ...] | None) -> tuple[str, ...]:
    """Refuse arguments no archive can be written with; returns the up-samplers to draw from."""
    if layout not in LAYOUTS:
        raise SynthError(f"unknown layout {layout!r}; known layouts: {', '.join(LAYOUTS)}")
    if n < 2 or n % 2:
        raise SynthError(f"n must be an even number of at least 2 (pairs of real and fake), got {n}")
    if size < 32 or size % 2:
        raise SynthError(f"size must be even and at least 32 pixels, got {size}")
    methods = tuple(sorted(UPSAMPLERS)) if upsamplers is None else tuple(upsamplers)
    unknown = [m for m in methods if m not in UPSAMPLERS]
    if unknown or not methods:
        raise SynthError(f"unknown up-sampler {unknown or '(none)'}; known up-samplers: {', '.join(UPSAMPLERS)}")
    if out.exists() and any(out.iterdir()):
        raise SynthError(f"{out} exists and is not empty; give a new folder")
    return methods


def _assign_splits(pairs: int, rng: np.random.Generator) -> list[str]:
    """70/15/15 of the pairs, every split non-empty when there are at least three pairs."""
    sizes = [int(round(pairs * frac)) for _, frac in SPLITS[1:]]
    if pairs >= 3:
        sizes = [max(1, s) for s in sizes]
    n_train = pairs - sum(sizes)
    names = ["train"] * n_train + ["valid"] * sizes[0] + ["test"] * sizes[1]
    order = rng.permutation(pairs)
    return [names[j] for j in order]


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="synth", unit="pair", disable=not enabled, leave=False)
