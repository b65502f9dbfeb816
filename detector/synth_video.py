"""A labelled SYNTHETIC video archive for tests and the demo: moving procedural scenes and simulated "fakes".

**This is not a deepfake data set.** A "real" clip is a camera panning smoothly
over one procedural picture (:func:`dfscan.detector.synth._procedural`), with
fresh sensor noise in every frame. Its "fake" twin is the same clip with every
frame passed through the image archive's simulator of generator up-sampling
artefacts (:func:`dfscan.detector.synth.simulate_fake`, one simulated layer per
clip, as one generator makes a whole video), plus temporal flicker: a small
random gain per frame, as frame-by-frame generators fail to keep exposure
steady. Both classes are encoded the same way (H.264 in MP4 by default, with a
random CRF per clip), so compression is no shortcut. A model trained here knows
this simulator and nothing about real deepfake videos.

The layout is that of the image archive: ``train|valid|test/real|fake`` or
plain ``real/`` and ``fake/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfscan.core.registry import Registry
from dfscan.detector.synth import (
    UPSAMPLERS,
    ArchiveSummary,
    SynthError,
    UnknownSynthName,
    _assign_splits,
    _bar,
    _procedural,
    check_archive,
    simulate_fake,
)

VIDEO_NOTICE = (
    "Synthetic video archive written by `dfscan synth --video`: procedural scenes with a panning camera, and "
    "'fakes' made from them frame by frame by a simulator of generator up-sampling artefacts with temporal "
    "flicker. It is NOT a deepfake data set; a model trained on it only knows this simulator."
)
MANIFEST_NAME = "synth.json"
# Sizes that keep the archive small: tests write a few clips of a few frames in well under a second.
DEFAULT_VIDEOS = 40
DEFAULT_SIZE = 128
DEFAULT_CLIP_FRAMES = 24
DEFAULT_FPS = 12
CRF_RANGE = (18, 26)  # near-transparent H.264: the simulated traces survive, as they do in a careful upload
FLICKER = 0.03  # per-frame gain jitter (standard deviation) of the fakes


@dataclass(frozen=True)
class VideoFormat:
    """A container and codec the archive can be written in."""

    name: str
    suffix: str
    container: str
    codec: str
    pix_fmt: str
    crf: bool  # whether the encoder takes x264's -crf option


VIDEO_FORMATS: Registry[VideoFormat] = Registry("video format", UnknownSynthName, plural="formats", entries=(
    VideoFormat("h264", ".mp4", "mp4", "libx264", "yuv420p", True),
    VideoFormat("mjpeg", ".avi", "avi", "mjpeg", "yuvj420p", False),
))


@dataclass(frozen=True)
class VideoSynthSummary(ArchiveSummary):
    """What :func:`synthesize_videos` wrote: counts of clips per split and class, and how."""

    out: Path
    layout: str
    size: int
    frames: int
    fps: int
    seed: int
    format: str
    counts: dict[str, dict[str, int]]
    upsamplers: tuple[str, ...] = tuple(sorted(UPSAMPLERS))
    notice: str = VIDEO_NOTICE
    kind: str = "video"


def real_clip(rng: np.random.Generator, size: int, frames: int) -> np.ndarray:
    """(frames, size, size, 3) uint8: a window panning in a straight line over a larger procedural picture."""
    margin = max(4, size // 4)
    canvas = _procedural(rng, size + 2 * margin).astype(np.float32)
    start = rng.uniform(0, 2 * margin, 2)
    end = rng.uniform(0, 2 * margin, 2)
    clip = np.empty((frames, size, size, 3), dtype=np.uint8)
    noise = rng.uniform(1.5, 4.0)
    for t in range(frames):
        s = t / max(1, frames - 1)
        y, x = np.rint(start * (1 - s) + end * s).astype(int)
        frame = canvas[y : y + size, x : x + size] + rng.normal(0, noise, (size, size, 3))  # fresh sensor noise
        clip[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return clip


def fake_clip(rng: np.random.Generator, real: np.ndarray, method: str) -> np.ndarray:
    """Each frame of ``real`` through the up-sampling simulator ``method``, with a random gain per frame."""
    out = np.empty_like(real)
    for t, frame in enumerate(real):
        fake, _ = simulate_fake(rng, frame, method)
        gain = 1.0 + rng.normal(0, FLICKER)
        out[t] = np.clip(fake.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    return out


def write_clip(path: Path, clip: np.ndarray, fps: int, fmt: VideoFormat, crf: int) -> Path:
    """Encode ``clip`` (T, H, W, 3 RGB uint8) with PyAV; written under a temporary name, then renamed."""
    import av

    tmp = path.with_name(path.name + ".tmp")
    options = {"crf": str(crf), "preset": "veryfast"} if fmt.crf else {}
    try:
        with av.open(str(tmp), "w", format=fmt.container) as container:
            stream = container.add_stream(fmt.codec, rate=fps, options=options)
            stream.width, stream.height = clip.shape[2], clip.shape[1]
            stream.pix_fmt = fmt.pix_fmt
            for frame in clip:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return path


def synthesize_videos(
    out: Path,
    n: int = DEFAULT_VIDEOS,
    *,
    layout: str = "140k",
    size: int = DEFAULT_SIZE,
    frames: int = DEFAULT_CLIP_FRAMES,
    fps: int = DEFAULT_FPS,
    seed: int = 0,
    video_format: str = "h264",
    upsamplers: tuple[str, ...] | None = None,
    progress: bool = False,
) -> VideoSynthSummary:
    """Write ``n`` clips (half real, half fake, in pairs of the same scene) under ``out``.

    The same arguments give the same frames (the encoder's bytes may differ between PyAV versions).
    """
    fmt = VIDEO_FORMATS.get(video_format)
    if not 1 <= frames <= 10_000 or not 1 <= fps <= 240:
        raise SynthError(f"frames per clip must be 1-10000 and fps 1-240, got {frames} and {fps}")
    out = Path(out)
    methods = check_archive(out, n, layout, size, upsamplers)

    pairs = n // 2
    split_of = _assign_splits(pairs, np.random.default_rng([seed, 1])) if layout == "140k" else [""] * pairs
    counts: dict[str, dict[str, int]] = {}
    bar = _bar(pairs, progress)
    for i in range(pairs):
        rng = np.random.default_rng([seed, 3, i])
        real = real_clip(rng, size, frames)
        method = methods[int(rng.integers(len(methods)))]
        fake = fake_clip(rng, real, method)
        crf = int(rng.integers(CRF_RANGE[0], CRF_RANGE[1] + 1))
        folder = out / split_of[i] if split_of[i] else out
        for label, clip in (("real", real), ("fake", fake)):
            (folder / label).mkdir(parents=True, exist_ok=True)
            name = f"{i:06d}{fmt.suffix}" if label == "real" else f"{i:06d}_{method}{fmt.suffix}"
            write_clip(folder / label / name, clip, fps, fmt, crf)
            split_counts = counts.setdefault(split_of[i] or "all", {"real": 0, "fake": 0})
            split_counts[label] += 1
        bar.update(1)
    bar.close()
    summary = VideoSynthSummary(out, layout, size, frames, fps, seed, video_format, counts, methods)
    (out / MANIFEST_NAME).write_text(json.dumps(summary.to_dict(), indent=2) + "\n", encoding="utf-8")
    (out / "README.txt").write_text(VIDEO_NOTICE + "\n", encoding="utf-8")
    return summary
