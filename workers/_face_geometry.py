"""Pure geometry of the face stage: how far to downscale for detection, and the square crop around a face."""

from __future__ import annotations


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
