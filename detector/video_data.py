"""Videos as training and evaluation samples: T frames sampled by the scanner's own sampler, as one sequence.

A video becomes a (T, 3, H, W) float32 array: :func:`dfscan.workers.video.sample.sample_video`
takes T frames evenly spaced in time (upright, RGB), each is resized and
normalised as the scanner's Pillow path does (:func:`workers.images.decode.to_tensor`).
For training, a video that yields fewer than T distinct frames (shorter than T
frames, or frames that did not decode) has its frames repeated in time order
up to T, so every sequence of a batch has the same length; evaluation
(``pad=False``) scores the frames it got, as a scan does. Training applies the image
augmentation with the same random draw to every frame of a clip: a flip or a
rotation that changed from frame to frame would be a temporal artefact of its own.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dfscan.detector.data import Augment, augment_pipeline
from dfscan.workers.images.decode import Preprocess, to_tensor
from dfscan.workers.video.sample import DEFAULT_FRAMES, DEFAULT_TIME_LIMIT_S

VideoTransform = Callable[[str], np.ndarray]


def fit_frames(frames: list[np.ndarray], t: int) -> list[np.ndarray]:
    """Exactly ``t`` frames: ``frames`` itself, or its frames repeated (in time order) when it has fewer."""
    if not frames:
        raise ValueError("no frames to fit")
    if len(frames) == t:
        return list(frames)
    picks = (np.arange(t) * len(frames)) // t  # fewer: each frame held a while; more: evenly thinned
    return [frames[int(i)] for i in picks]


def _sample(path: str, frames: int, time_limit_s: float, pre: Preprocess, pad: bool = True):
    from PIL import Image

    from dfscan.workers.video.sample import sample_video

    sampled = sample_video(path, frames, time_limit_s=time_limit_s, max_pixels=pre.max_pixels)
    return [Image.fromarray(f) for f in (fit_frames(sampled.frames, frames) if pad else sampled.frames)]


def video_eval_transform(
    pre: Preprocess, frames: int = DEFAULT_FRAMES, time_limit_s: float = DEFAULT_TIME_LIMIT_S, *, pad: bool = True
) -> VideoTransform:
    """Path to a normalised (T, 3, H, W) float32 array of ``frames`` sampled frames; raises the sampler's VideoError.

    ``pad=False``: only the distinct frames the sampler found (T or fewer), as the scan's video stage scores them.
    """

    def run(path: str) -> np.ndarray:
        return np.stack([to_tensor(im, pre) for im in _sample(path, frames, time_limit_s, pre, pad)])

    return run


def video_train_transform(
    pre: Preprocess, frames: int = DEFAULT_FRAMES, augment: Augment = Augment(),
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
) -> VideoTransform:
    """As :func:`video_eval_transform`, with the original project's augmentation drawn once per clip."""
    import torch
    from PIL import Image

    pipeline = augment_pipeline(augment)
    h, w = pre.size
    a, b = pre.scale_and_shift()

    def run(path: str) -> np.ndarray:
        ims = [im if im.size == (w, h) else im.resize((w, h), Image.Resampling.BILINEAR)  # to_tensor's resize
               for im in _sample(path, frames, time_limit_s, pre)]
        clip = torch.from_numpy(np.stack([np.asarray(im) for im in ims])).permute(0, 3, 1, 2)  # (T, 3, H, W) uint8
        clip = pipeline(clip)  # a plain tensor with leading dims: one random draw for the whole clip
        return clip.numpy().astype(np.float32) * a + b

    return run
