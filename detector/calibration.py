"""Sample images for calibration, read and decoded exactly as a scan reads and decodes them.

INT8 quantisation (``dfscan quantize``) and TensorRT's INT8 calibration both
need a few hundred images "like the ones you scan"; both take them from here,
so both see the tensors the scanner would feed the model. Unreadable and
undecodable files are skipped and counted, never silently scored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfscan.scanner import WalkOptions, walk
from dfscan.core.settings import DEFAULT_EXTENSIONS
from dfscan.trt.errors import Int8CalibrationError
from dfscan.trt.model_info import ModelInfo
from dfscan.workers.images.decode import Preprocess, decode_one
from dfscan.workers.reading.errors import ImageError
from dfscan.workers.reading.reader import read_file

__all__ = ["CalibrationImages", "calibration_images", "image_files"]


@dataclass(frozen=True)
class CalibrationImages:
    """Decoded images, (N, 3, H, W) float32, with the files they came from and how many were skipped."""

    tensors: np.ndarray
    files: list[Path]
    skipped: int


def image_files(folder: Path, limit: int | None = None, extensions: tuple[str, ...] = DEFAULT_EXTENSIONS) -> list[Path]:
    """Image files under ``folder`` in the walker's order, at most ``limit``; raises if the folder is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise Int8CalibrationError(f"calibration folder {folder} does not exist")
    out: list[Path] = []
    for path in walk([folder], WalkOptions(extensions=extensions)):
        out.append(Path(path))
        if limit is not None and len(out) >= limit:
            break
    return out


def calibration_images(
    source: Path | Sequence[Path],
    info: ModelInfo,
    *,
    limit: int | None = None,
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS,
) -> CalibrationImages:
    """Decode up to ``limit`` images of a folder (or a list of files) with the model's preprocessing."""
    if isinstance(source, (str, os.PathLike)):
        files = image_files(Path(source), None, extensions)
        if not files:
            raise Int8CalibrationError(f"no image files under {source} (looked for {', '.join(extensions)})")
    else:
        files = [Path(p) for p in source]
    pre = Preprocess(size=info.input_size, mean=info.mean, std=info.std)
    tensors: list[np.ndarray] = []
    used: list[Path] = []
    skipped = 0
    for path in files:
        if limit is not None and len(tensors) >= limit:
            break
        try:
            tensors.append(decode_one(read_file(os.fspath(path)).data, pre))
        except ImageError:
            skipped += 1
            continue
        used.append(path)
    if not tensors:
        h, w = info.input_size
        return CalibrationImages(np.zeros((0, 3, h, w), dtype=np.float32), used, skipped)
    return CalibrationImages(np.stack(tensors).astype(np.float32, copy=False), used, skipped)
