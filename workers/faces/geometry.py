"""Geometry of faces: which boxes are kept, how far to downscale for detection, the square crop around a face."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


# An RGB image as the face code takes it: a Pillow image (the image decoder's, never copied to an array)
# or an (H, W, 3) uint8 array (a video frame, DALI's output).
RGBImage = Image.Image | np.ndarray


def image_size(im: RGBImage) -> tuple[int, int]:
    """``(width, height)`` of a Pillow image or an (H, W, 3) array."""
    return im.size if isinstance(im, Image.Image) else (im.shape[1], im.shape[0])


def detection_scale(width: int, height: int, detect_size: int) -> float:
    """The factor that brings the longer side down to ``detect_size``; never above 1 (no upscaling)."""
    return min(1.0, detect_size / max(width, height, 1))


def crop_square(box: tuple[float, float, float, float], width: int, height: int,
                margin: float) -> tuple[int, int, int]:
    """``(x0, y0, side)`` of a square ``margin`` times the box's longer side, centred on it, inside the image.

    A square larger than the image's shorter side shrinks to that side; one
    that crosses an edge slides back inside, so a face on the border is
    cropped with all the margin the image has.
    """
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * margin
    side_i = int(round(min(side, width, height)))
    side_i = max(1, min(side_i, width, height))
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    x0 = int(round(cx - side_i / 2.0))
    y0 = int(round(cy - side_i / 2.0))
    x0 = min(max(x0, 0), width - side_i)
    y0 = min(max(y0, 0), height - side_i)
    return x0, y0, side_i


@dataclass(frozen=True)
class FaceOptions:
    max_faces: int = 16
    margin: float = 1.3
    min_size: int = 24
    aggregation: str = "max"
    detect_size: int = 640

    @classmethod
    def from_settings(cls, settings) -> "FaceOptions":
        return cls(max_faces=settings.max_faces, margin=settings.face_margin, min_size=settings.min_face_size,
                   aggregation=settings.face_aggregation, detect_size=settings.face_detect_size)


def select_faces(boxes: np.ndarray, width: int, height: int, options: FaceOptions):
    """Boxes clipped to the image, those under ``min_size`` dropped, largest first, capped; and how many were found."""
    faces = []
    for x1, y1, x2, y2, score in boxes:
        x1, y1 = max(0.0, float(x1)), max(0.0, float(y1))
        x2, y2 = min(float(width), float(x2)), min(float(height), float(y2))
        if x2 - x1 < 1 or y2 - y1 < 1 or max(x2 - x1, y2 - y1) < options.min_size:
            continue
        faces.append((x1, y1, x2, y2, float(score)))
    faces.sort(key=lambda f: -(f[2] - f[0]) * (f[3] - f[1]))  # the cap keeps the largest
    return faces[: options.max_faces], len(faces)


def crop_faces(im: RGBImage, faces, options: FaceOptions, size: tuple[int, int]):
    """``(crop resized to size (H, W), (x0, y0, side))`` per face: a square of margin x the box, inside the image."""
    w, h = image_size(im)
    pil = im if isinstance(im, Image.Image) else Image.fromarray(im)
    th, tw = size
    out = []
    for x1, y1, x2, y2, _score in faces:
        x0, y0, side = crop_square((x1, y1, x2, y2), w, h, options.margin)
        crop = pil.resize((tw, th), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
        out.append((crop, (x0, y0, side)))
    return out
