"""Face detectors: a table of named detectors, and :class:`FaceFinder`, which finds faces in RGB images.

Detectors are data (:data:`FACE_DETECTORS`): MTCNN from facenet-pytorch now
(its wheel ships the P/R/O-net weights, nothing is downloaded).  A finder
looks at a copy of each image whose longer side is ``detect_size`` (batched:
a sub-batch shares one canvas) and gives the boxes in the image's own pixels.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image

from dfscan.workers.faces.geometry import FaceOptions, RGBImage, detection_scale, image_size
from dfscan.core.errors import first_line
from dfscan.core.registry import Registry
from dfscan.workers.reading.errors import DecoderUnavailable, ImageError, UnknownFaceDetector

# Images decoded and detected together, at most (the face decoder also bounds their decoded bytes).
DETECT_BATCH = 16


@dataclass(frozen=True)
class FaceDetectorSpec:
    name: str
    description: str
    create: Callable[..., "FaceDetector"]


class FaceDetector:
    """``detect(canvas)``: per image of an (N, H, W, 3) uint8 batch, an (n, 5) array of x1, y1, x2, y2, score."""

    name = "none"
    device = "cpu"

    def detect(self, canvas: np.ndarray, min_size: int | None = None) -> list[np.ndarray]:  # pragma: no cover
        """``min_size``: the smallest face worth finding, in canvas pixels (None: the detector's own)."""
        raise NotImplementedError


class MtcnnDetector(FaceDetector):
    """MTCNN: facenet-pytorch's P-, R- and O-net weights (from its wheel), batched across images
    (:class:`~dfscan.workers.faces._mtcnn.BatchedMtcnn`); on the GPU where there is one.

    ``nets``: ``auto`` runs them through ONNX Runtime on the CPU (exported from
    the same weights) and as torch modules on CUDA; see ``MTCNN_NETS``.
    """

    name = "mtcnn"
    MIN_SIZE = 20  # pixels of the detection canvas; MTCNN's own default
    # A dependency of dfscan (pyproject.toml): 2.5.3, whose metadata leaves torch free (2.6.0 pins torch<2.3);
    # its MTCNN code and weights are byte for byte 2.6.0's.
    REQUIREMENT = "facenet-pytorch==2.5.3"

    def __init__(self, device: str = "auto", threads: int | None = None, nets: str = "auto") -> None:
        import torch

        try:
            from facenet_pytorch import MTCNN
        except ImportError as exc:  # a user's to fix: one line saying what to install (DecoderUnavailable)
            raise DecoderUnavailable(
                f"the {self.name} face detector can't be imported ({exc}); install it: "
                f"pip install '{self.REQUIREMENT}' (or scan with --faces off)") from None
        from dfscan.workers.faces._mtcnn import MTCNN_NETS, BatchedMtcnn

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        # MTCNN's convolutions are small: more intra-op threads gain little and, on a busy machine,
        # lose a lot (10x measured with 2 threads on 2 shared cores); detection also runs beside the
        # runtime (the prefetch thread), which has the cores.
        self.threads = threads or 1
        self.device = device
        self._torch = torch
        self._mtcnn = MTCNN(keep_all=True, min_face_size=self.MIN_SIZE, device=device)
        kind = torch.device(device).type
        usable = [spec for spec in MTCNN_NETS if kind in spec.devices]
        if nets != "auto":
            known = [spec.name for spec in MTCNN_NETS]
            usable = [spec for spec in usable if spec.name == nets]
            if not usable:
                raise UnknownFaceDetector(f"no MTCNN nets {nets!r} for device {device!r}; known: {', '.join(known)}")
        self.nets = usable[0].name
        self._batched = BatchedMtcnn(usable[0].create(self._mtcnn, self.threads), self._mtcnn.thresholds,
                                     self._mtcnn.factor)

    def detect(self, canvas: np.ndarray, min_size: int | None = None) -> list[np.ndarray]:
        # (N, H, W, 3) uint8 permuted: an (N, 3, H, W) view, laid out channels-last as the CPU pyramid wants it.
        canvas = np.ascontiguousarray(canvas)
        if not canvas.flags.writeable:  # a Pillow image's array: torch takes only writable memory
            canvas = canvas.copy()
        batch = self._torch.from_numpy(canvas).to(self.device).permute(0, 3, 1, 2)
        return self.detect_tensors(batch, min_size)

    def detect_tensors(self, images, min_size: int | None = None,
                       sizes: list[tuple[int, int]] | None = None) -> list[np.ndarray]:
        """Per image of an (N, 3, H, W) RGB 0..255 tensor (float32 or uint8) on any device, its boxes as
        :meth:`detect` gives them (x1, y1, x2, y2, score in that tensor's pixels).

        ``sizes``: each image's (height, width) when they share a zero-padded
        batch (its own scales and candidates only); default the whole batch.
        """
        # Below 20 canvas pixels MTCNN finds little; above, each step up drops pyramid levels (faster).
        min_face = max(self.MIN_SIZE, int(min_size or 0))
        if images.device.type != "cpu":
            return self._batched.detect(images, min_face, sizes)
        with _THREADS.held(self._torch, self.threads):
            return self._batched.detect(images, min_face, sizes)


class _TorchThreads:
    """torch's intra-op thread count held at ``n`` while any detection on the CPU runs, restored by the last one out.

    The count is the process's: detections that overlap (the face stage's lanes) must not each restore what
    the other set, which would leave the count at MTCNN's for the rest of the process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._previous = 0

    @contextmanager
    def held(self, torch, n: int):
        with self._lock:
            if self._inside == 0:
                self._previous = torch.get_num_threads()
                torch.set_num_threads(n)
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0:
                    torch.set_num_threads(self._previous)


_THREADS = _TorchThreads()


FACE_DETECTORS: Registry[FaceDetectorSpec] = Registry(
    "face detector",
    UnknownFaceDetector,
    message="unknown {kind} {name!r}; known: {known}",
    entries=(
        FaceDetectorSpec("mtcnn", "MTCNN (facenet-pytorch 2.6, weights in its wheel); the GPU where there is one",
                         lambda device, threads=None: MtcnnDetector(device, threads)),
    ),
)


def create_face_detector(name: str, device: str = "auto", threads: int | None = None) -> FaceDetector:
    """The detector ``name`` of :data:`FACE_DETECTORS`; an unknown name raises :class:`UnknownFaceDetector`."""
    return FACE_DETECTORS.create(name, device, threads)


class FaceFinder:
    """Face boxes (x1, y1, x2, y2, score) in each RGB image's own pixels, with ``detector`` on downscaled copies."""

    def __init__(self, detector: FaceDetector, options: FaceOptions) -> None:
        self.detector = detector
        self.options = options

    def detect(self, images: list[RGBImage]) -> list[np.ndarray | ImageError]:
        """Boxes per image, :data:`DETECT_BATCH` images at a time; a failure on one image is that image's error."""
        return self.detect_canvases(images)[0]

    def detect_canvases(self, images: list[RGBImage]) -> tuple[list[np.ndarray | ImageError], list[np.ndarray]]:
        """:meth:`detect`'s boxes, and each image's downscaled copy that the detector read (uint8 (h, w, 3)).

        The copies are the whole image at the canvas's size: the face stage
        hashes them (PDQ) rather than have the hash stage decode the file again.
        """
        found: list[np.ndarray | ImageError] = []
        canvases: list[np.ndarray] = []
        for start in range(0, len(images), DETECT_BATCH):
            boxes, small = self._detect(images[start : start + DETECT_BATCH])
            found.extend(boxes)
            canvases.extend(small)
        return found, canvases

    def _detect(self, images: list[RGBImage]) -> tuple[list[np.ndarray | ImageError], list[np.ndarray]]:
        """Boxes in original pixels per image (a detector failure on one image is that image's error), and
        the downscaled copies they were found on."""
        if not images:
            return [], []
        scales = [detection_scale(*image_size(im), self.options.detect_size) for im in images]
        small = [_downscale(im, s) for im, s in zip(images, scales)]
        # The smallest face looked for: the options' limit, at the scale that shrinks min_size most.
        min_canvas = self.options.canvas_min_face(min(scales))
        found = detect_each(lambda ims: self.detector.detect(_canvas(ims), min_canvas), small)
        return [_rescale(f, s) for f, s in zip(found, scales)], small


def detect_each(detect, small: list) -> list:
    """Boxes per image from one ``detect`` over all of them; where that fails, image by image.

    An image whose own detection fails gets an :class:`ImageError` (its row's reason); the others go on.
    """
    try:
        found = detect(small)
    except Exception:  # noqa: BLE001 - find the image that fails, the others go on
        found = None
    if found is not None and len(found) == len(small):
        return list(found)
    found = []
    for im in small:
        try:
            found.append(detect([im])[0])
        except Exception as exc:  # noqa: BLE001
            found.append(ImageError("face-detect-failed", f"face detection failed: {first_line(exc, 160)}"))
    return found


def _downscale(im: RGBImage, scale: float) -> np.ndarray:
    """The detector's copy: an array, no larger than ``scale`` (a Pillow image is resized without an array copy)."""
    pil = isinstance(im, Image.Image)
    if scale >= 1.0:
        return np.asarray(im) if pil else im
    w, h = image_size(im)
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return np.asarray((im if pil else Image.fromarray(im)).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))


def _canvas(images: list[np.ndarray]) -> np.ndarray:
    """Images of different sizes on one zero-padded canvas (top-left), so MTCNN runs them as one batch."""
    hh = max(im.shape[0] for im in images)
    ww = max(im.shape[1] for im in images)
    canvas = np.zeros((len(images), max(hh, 12), max(ww, 12), 3), dtype=np.uint8)
    for k, im in enumerate(images):
        canvas[k, : im.shape[0], : im.shape[1]] = im
    return canvas


def _rescale(found, scale: float):
    if isinstance(found, ImageError):
        return found
    found = np.asarray(found, dtype=np.float64).reshape(-1, 5).copy()
    found[:, :4] /= scale
    return found
