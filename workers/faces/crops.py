"""Resizing and face crops on torch tensors, pixel for pixel as Pillow makes them on the host.

The tensor path (``--batches device``) keeps a decoded image on the runtime's
device from decode to logits, so the resizes the host path leaves to Pillow
(the detector's downscaled copy, each face's square crop, a video frame at
the model's size) run here on the tensor.  ``torchvision.ops.roi_align``
would cut the same squares, but its filter (a mean of bilinear samples per
output pixel) is not Pillow's (a triangle widened by the scale factor, two
passes rounded to 8 bits), and the crops would differ by a few grey levels.
This module computes Pillow's own ``BILINEAR`` coefficients (its
``precompute_coeffs`` and 22-bit fixed-point rounding) and applies them as
two matrix products in float64, which holds every fixed-point sum exactly,
horizontal pass first as Pillow has long done it: the result equals Pillow's
``Image.resize(size, BILINEAR, box=...)`` byte for byte where Pillow takes
that order.  Pillow 13 runs the vertical pass first for some shapes
(python-pillow/Pillow#9549, a speed heuristic); there some pixels differ by
one grey level (the tests bound it).  Which square is cropped is
:func:`~dfscan.workers.faces.geometry.crop_square`'s rule, as on the host.

Not emulated: Pillow's ``reducing_gap`` pre-reduction, which the host's
detector copy uses for images at least four times ``detect_size`` (it box-
averages them first); on those the detector's copy differs by about a grey
level, and boxes by a fraction of a pixel.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from dfscan.workers.faces.geometry import FaceOptions, crop_square

if TYPE_CHECKING:
    import torch

__all__ = ["crop_tensors", "detect_canvas", "downscaled", "find_faces", "pillow_coefficients", "resize_region"]

# Pillow's fixed point for 8-bit images (Resample.c: PRECISION_BITS = 32 - 8 - 2).
PRECISION_BITS = 22


@lru_cache(maxsize=64)  # whole frames and detector copies repeat their sizes; face squares rarely do
def pillow_coefficients(in_size: int, in0: float, in1: float, out_size: int,
                        device: str = "cpu") -> tuple["torch.Tensor", int, int]:
    """Pillow's BILINEAR weights for ``[in0, in1)`` of ``in_size`` pixels to ``out_size``, as integers, on ``device``.

    Returns ``(weights, first, last)``: ``weights`` is (out_size, last - first)
    float64 holding Pillow's 22-bit integer coefficients, over source pixels
    ``first:last`` (the only ones any output pixel reads).  The arithmetic is
    Resample.c's ``precompute_coeffs`` and ``normalize_coeffs_8bpc``, in the
    same order, made where the image is (no host-to-device copy per crop).
    """
    import torch

    f64 = torch.float64
    in0, in1 = float(np.float32(in0)), float(np.float32(in1))  # Pillow takes the box as C floats
    scale = float(np.float32(in1 - in0)) / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = in0 + (torch.arange(out_size, dtype=f64, device=device) + 0.5) * scale
    xmin = torch.clamp(torch.trunc(center - support + 0.5), min=0).to(torch.int64)
    xmax = torch.clamp(torch.trunc(center + support + 0.5).to(torch.int64), max=in_size) - xmin
    x = torch.arange(ksize, dtype=torch.int64, device=device)
    valid = x[None, :] < xmax[:, None]
    w = torch.abs(((x[None, :] + xmin[:, None]).to(f64) - center[:, None] + 0.5) * (1.0 / filterscale))
    w = torch.where(valid & (w < 1.0), 1.0 - w, torch.zeros((), dtype=f64, device=device))
    ww = torch.cumsum(w, dim=1)[:, -1:]  # summed in order, as the C loop does
    w = torch.where(ww != 0.0, w / torch.where(ww != 0.0, ww, torch.ones_like(ww)), w)
    k = torch.trunc(0.5 + w * float(1 << PRECISION_BITS))  # the weights are never negative (a triangle)
    # The window, from the first and last output pixels' centres (they only grow), in Python: no device sync.
    first = max(0, math.trunc(in0 + 0.5 * scale - support + 0.5))
    last = min(math.trunc(in0 + (out_size - 0.5) * scale + support + 0.5), in_size)
    dense = torch.zeros((out_size, last - first), dtype=f64, device=device)
    cols = (xmin[:, None] - first + x[None, :]).clamp(max=last - first - 1)
    dense.scatter_add_(1, cols, torch.where(valid, k, torch.zeros((), dtype=f64, device=device)))  # 0s add nothing
    return dense, first, last


def _clip8(acc: "torch.Tensor") -> "torch.Tensor":
    """Pillow's ``clip8``: the 22-bit fixed-point sums (with their half added) to 0..255."""
    import torch

    return torch.clamp(torch.floor(acc / float(1 << PRECISION_BITS)), 0.0, 255.0)


def resize_region(image: "torch.Tensor", box: tuple[float, float, float, float],
                  size: tuple[int, int]) -> "torch.Tensor":
    """``image`` (H, W, 3) uint8, its ``box`` (x0, y0, x1, y1) resized to ``size`` (H, W): (3, H, W) float64.

    Pillow's ``Image.fromarray(image).resize((W, H), BILINEAR, box=box)``: the
    horizontal pass over the rows the vertical pass reads, rounded to 8 bits,
    then the vertical pass, rounded again.  The values are whole grey levels.
    """
    import torch

    height, width = int(image.shape[0]), int(image.shape[1])
    out_h, out_w = size
    x0, y0, x1, y1 = box
    device = str(image.device)
    kx, fx, lx = pillow_coefficients(width, float(x0), float(x1), out_w, device)
    ky, fy, ly = pillow_coefficients(height, float(y0), float(y1), out_h, device)
    half = float(1 << (PRECISION_BITS - 1))
    window = image[fy:ly, fx:lx].permute(2, 0, 1).to(torch.float64)  # (3, rows, cols)
    across = _clip8(window @ kx.T + half)  # (3, rows, out_w)
    return _clip8(ky @ across + half)  # (3, out_h, out_w)


def crop_tensors(image: "torch.Tensor", faces, options: FaceOptions,
                 size: tuple[int, int]) -> tuple["torch.Tensor", list[tuple[int, int, int]]]:
    """Each face's square (margin x its box, inside the image) at ``size``: (n, 3, H, W) float64 and the squares.

    The tensor counterpart of :func:`~dfscan.workers.faces.geometry.crop_faces`:
    the same squares, the same pixels.
    """
    import torch

    height, width = int(image.shape[0]), int(image.shape[1])
    crops, squares = [], []
    for x1, y1, x2, y2, _score in faces:
        x0, y0, side = crop_square((x1, y1, x2, y2), width, height, options.margin)
        crops.append(resize_region(image, (x0, y0, x0 + side, y0 + side), size))
        squares.append((x0, y0, side))
    return torch.stack(crops), squares


def downscaled(image: "torch.Tensor", scale: float) -> "torch.Tensor":
    """The detector's copy of ``image`` (H, W, 3), no larger than ``scale``: (h, w, 3), whole grey levels.

    The host's copy (:class:`~dfscan.workers.faces.FaceFinder`) is Pillow's BILINEAR resize to the same size.
    """
    if scale >= 1.0:
        return image
    height, width = int(image.shape[0]), int(image.shape[1])
    size = (max(1, int(round(height * scale))), max(1, int(round(width * scale))))
    return resize_region(image, (0, 0, width, height), size).permute(1, 2, 0)


def find_faces(finder, images: list) -> list:
    """What ``finder.detect(images)`` gives, for (H, W, 3) images on a torch device: boxes in each image's pixels.

    :data:`~dfscan.workers.faces.DETECT_BATCH` images at a time: each is
    downscaled on its device (:func:`downscaled`), the copies share one
    zero-padded canvas (top-left), and the detector runs on it
    (:func:`detect_canvas`); a failure on the batch is retried image by
    image, and an image that still fails gets its ``face-detect-failed`` error.
    """
    from dfscan.workers.faces.detectors import DETECT_BATCH

    found: list = []
    for start in range(0, len(images), DETECT_BATCH):
        found.extend(_find(finder, images[start : start + DETECT_BATCH]))
    return found


def _find(finder, images: list) -> list:
    from dfscan.workers.faces.detectors import detect_each
    from dfscan.workers.faces.geometry import detection_scale
    from dfscan.workers.reading.errors import ImageError

    if not images:
        return []
    options = finder.options
    scales = [detection_scale(int(im.shape[1]), int(im.shape[0]), options.detect_size) for im in images]
    small = [downscaled(im, s) for im, s in zip(images, scales)]
    min_canvas = options.canvas_min_face(min(scales))
    found = detect_each(lambda ims: detect_canvas(finder.detector, _canvas(ims), min_canvas), small)
    out = []
    for boxes, scale in zip(found, scales):
        if not isinstance(boxes, ImageError):
            boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5).copy()
            boxes[:, :4] /= scale
        out.append(boxes)
    return out


def _canvas(images: list) -> "torch.Tensor":
    """(N, 3, H, W) float32: the images on one zero-padded canvas (top-left), at least 12 pixels a side (MTCNN's)."""
    import torch

    hh = max(int(im.shape[0]) for im in images)
    ww = max(int(im.shape[1]) for im in images)
    canvas = torch.zeros((len(images), 3, max(hh, 12), max(ww, 12)), dtype=torch.float32, device=images[0].device)
    for k, im in enumerate(images):
        canvas[k, :, : im.shape[0], : im.shape[1]] = im.permute(2, 0, 1)
    return canvas


def detect_canvas(detector, canvas: "torch.Tensor", min_size: int) -> list[np.ndarray]:
    """Boxes per image of an (N, 3, H, W) canvas of grey levels, in its pixels.

    A detector that takes tensors (``detect_tensors``) reads the canvas where
    it is; any other gets a host copy as the (N, H, W, 3) uint8 batch its
    ``detect`` takes.
    """
    import torch

    on_device = getattr(detector, "detect_tensors", None)
    if on_device is not None:
        return on_device(canvas, min_size)
    host = canvas.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()
    return detector.detect(host, min_size)
