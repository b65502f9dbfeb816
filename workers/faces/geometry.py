"""Geometry of faces: which boxes are kept, how far to downscale for detection, the square crop around a face."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


# An RGB image as the face code takes it: a Pillow image (the image decoder's, never copied to an array)
# or an (H, W, 3) uint8 array (a video frame, DALI's output).
RGBImage = Image.Image | np.ndarray

# The smallest face the detector looks for on its canvas, in canvas pixels (FaceOptions.detect_min_face).
DETECT_MIN_FACE = 28


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
    """What the face stage looks for and keeps.

    The detector's work is bounded by two limits on its downscaled copy of
    the image (the "canvas"): ``detect_size``, the canvas's longer side (an
    image is never upscaled), and ``detect_min_face``, the smallest face it
    looks for there, in canvas pixels.  On an image larger than the canvas the
    smallest face looked for is thus ``detect_min_face / detect_size`` of its
    longer side (with the defaults 28/512, 5.5%: 63 pixels on a 1155-pixel
    photo), on a smaller one ``detect_min_face`` pixels; boxes under
    ``min_size`` original pixels are dropped.  MTCNN's P-net runs over a
    pyramid whose first level brings a ``detect_min_face`` face to its
    12-pixel window; that level holds about half of the pyramid's pixels and
    the most R-net candidates, so 28 rather than MTCNN's own 20 takes about a
    third off the face stage (docs/faces.md), for faces that, cropped at
    ``margin`` and resized to the classifier's 224 pixels, would be enlarged
    four times or more.  MTCNN still finds many faces somewhat under the limit.
    """

    max_faces: int = 16
    margin: float = 1.3
    min_size: int = 24  # original pixels: smaller boxes are not scored
    aggregation: str = "max"
    detect_size: int = 512  # the canvas's longer side
    detect_min_face: int = DETECT_MIN_FACE  # canvas pixels

    def __post_init__(self) -> None:
        if self.detect_min_face < 12:  # MTCNN's P-net window: no face smaller than it can be looked for
            raise ValueError(f"detect_min_face must be at least 12 canvas pixels, got {self.detect_min_face}")

    @classmethod
    def from_settings(cls, settings) -> "FaceOptions":
        return cls(max_faces=settings.max_faces, margin=settings.face_margin, min_size=settings.min_face_size,
                   aggregation=settings.face_aggregation, detect_size=settings.face_detect_size,
                   detect_min_face=settings.face_detect_min_face)

    def canvas_min_face(self, scale: float) -> int:
        """The smallest face the detector looks for on a canvas made at ``scale``, in canvas pixels:
        ``detect_min_face``, or ``min_size`` at that scale where that is larger."""
        return max(self.detect_min_face, int(self.min_size * scale))


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
