"""The face stage: find the faces of each decoded image, crop them, score the crops, give the image their verdict.

The product's detector was trained on aligned face crops; a whole photo resized
to its input is nothing it has seen.  With faces on, each image is decoded to
RGB once (oriented), the detector looks at a downscaled copy (batched across
images: a sub-batch shares one canvas), and each face is cropped from the
full-resolution image as a square of ``margin`` times the face box (clamped
to the image), resized to the model's input and normalised like a whole
image.  The crops of every image of a batch go through the runtime together
(in runtime batches of ``batch_size``); the image's p_fake is the max (or
mean) over its faces, and an image without a face gets the status
``no-face``: neither a verdict nor an error.

Detectors are data (:data:`FACE_DETECTORS`): MTCNN from facenet-pytorch now
(its wheel ships the P/R/O-net weights, nothing is downloaded).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
from PIL import Image

from dfscan.db.records import FaceRow, ResultRow
from dfscan.trt.base import Runtime, run_batched
from dfscan.trt.errors import InferenceFailed
from dfscan.workers._face_geometry import crop_square, detection_scale
from dfscan.workers.decode import Preprocess, load_rgb
from dfscan.workers.errors import ImageError, UnknownDecoder
from dfscan.workers.reader import FileData

# Images decoded and detected together: bounds the full-resolution images held at once.
DETECT_BATCH = 16


# -- detectors ----------------------------------------------------------------------------


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
    """MTCNN (facenet-pytorch): P-, R- and O-net, weights from its wheel, on the GPU where there is one."""

    name = "mtcnn"
    MIN_SIZE = 20  # pixels of the detection canvas; MTCNN's own default

    def __init__(self, device: str = "auto", threads: int | None = None) -> None:
        import torch
        from facenet_pytorch import MTCNN

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        # MTCNN's convolutions are small: more intra-op threads gain little and, on a busy machine,
        # lose a lot (10x measured with 2 threads on 2 shared cores); detection also runs beside the
        # runtime (the prefetch thread), which has the cores.
        self.threads = threads or 1
        self.device = device
        self._torch = torch
        self._mtcnn = MTCNN(keep_all=True, min_face_size=self.MIN_SIZE, device=device)

    def detect(self, canvas: np.ndarray, min_size: int | None = None) -> list[np.ndarray]:
        from facenet_pytorch.models.utils.detect_face import detect_face

        # Below 20 canvas pixels MTCNN finds little; above, each step up drops pyramid levels (faster).
        min_face = max(self.MIN_SIZE, int(min_size or 0))
        m = self._mtcnn
        torch = self._torch
        previous = torch.get_num_threads()
        if self.device == "cpu":
            torch.set_num_threads(self.threads)
        try:
            with torch.no_grad():
                batch = torch.as_tensor(np.ascontiguousarray(canvas), device=self.device)
                boxes, _points = detect_face(batch, min_face, m.pnet, m.rnet, m.onet, m.thresholds, m.factor,
                                             self.device)
        finally:
            torch.set_num_threads(previous)
        out = []
        for b in boxes:
            arr = np.asarray(b, dtype=np.float64)
            out.append(arr.reshape(-1, 5) if arr.size else np.zeros((0, 5)))
        return out


FACE_DETECTORS: dict[str, FaceDetectorSpec] = {
    spec.name: spec
    for spec in (
        FaceDetectorSpec("mtcnn", "MTCNN (facenet-pytorch 2.6, weights in its wheel); the GPU where there is one",
                         lambda device, threads=None: MtcnnDetector(device, threads)),
    )
}


def create_face_detector(name: str, device: str = "auto", threads: int | None = None) -> FaceDetector:
    try:
        spec = FACE_DETECTORS[name]
    except KeyError:
        raise UnknownDecoder(f"unknown face detector {name!r}; known: {', '.join(FACE_DETECTORS)}") from None
    return spec.create(device, threads)


# -- the stage ----------------------------------------------------------------------------


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


@dataclass
class FaceCrops:
    """One image through the face stage: its scored faces (largest first), how many were found, their tensors."""

    faces: list[tuple[int, int, int, int, float]]  # x, y, w, h (original pixels), detector score
    found: int
    tensors: np.ndarray | None  # (len(faces), 3, H, W) float32
    crops: list[tuple[int, int, int]] = field(default_factory=list)  # x0, y0, side of each crop


def face_stage(decoder, pre: Preprocess, settings) -> "FaceStage":
    """``decoder`` with the face stage on top, configured from ``settings``."""
    detector = create_face_detector(settings.face_detector)
    return FaceStage(decoder, pre, FaceOptions.from_settings(settings), detector, threads=settings.decode_threads,
                     batch_size=settings.batch_size)


def faces_enabled(mode: str, model_input: str) -> bool:
    """``on``/``off`` force it; ``auto`` follows what the model was trained on."""
    return mode == "on" or (mode == "auto" and model_input == "face-crop")


class FaceStage:
    """A decoder with faces: ``decode_batch(files) -> [FaceCrops | ImageError]``, then :meth:`score`.

    ``base`` decodes; when it can hand over oriented RGB images
    (``decode_rgb_batch``, e.g. DALI's decoded tensor) those are used, else
    Pillow decodes them (once: no model-size tensor is made from the file).
    """

    per_image = True

    def __init__(self, base, pre: Preprocess, options: FaceOptions, detector: FaceDetector,
                 threads: int = 2, batch_size: int = 64) -> None:
        self.base = base
        self.batch_size = batch_size  # crops per runtime call (the crops of many images share them)
        self.pre = pre
        self.options = options
        self.detector = detector
        self.name = f"{getattr(base, 'name', 'pillow')}+{detector.name}"
        self.version = getattr(base, "version", None)
        self.device = getattr(base, "device", "cpu")
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="faces")

    # -- decoding and detection -------------------------------------------------------------

    def _rgb_batch(self, files: Sequence[FileData]) -> list[np.ndarray | ImageError]:
        hook = getattr(self.base, "decode_rgb_batch", None)
        if hook is not None:
            return hook(files)
        return list(self._pool.map(self._rgb_one, files))

    def _rgb_one(self, f: FileData) -> np.ndarray | ImageError:
        try:
            return np.asarray(load_rgb(f.data, None, self.pre.max_pixels))
        except ImageError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - a decoder bug is this image's error
            return ImageError("decode-failed", f"decode failed: {str(exc)[:200]}")

    def decode_batch(self, files: Sequence[FileData]) -> list[FaceCrops | ImageError]:
        out: list[FaceCrops | ImageError] = []
        for start in range(0, len(files), DETECT_BATCH):
            rgbs = self._rgb_batch(files[start : start + DETECT_BATCH])
            images = [(i, im) for i, im in enumerate(rgbs) if not isinstance(im, ImageError)]
            boxes = self._detect([im for _, im in images])
            part: list[FaceCrops | ImageError] = list(rgbs)  # errors stay where they are
            for (i, im), found in zip(images, boxes):
                part[i] = found if isinstance(found, ImageError) else self._crops(im, found)
            out.extend(part)
        return out

    def detect(self, images: list[np.ndarray]) -> list[np.ndarray | ImageError]:
        """Face boxes (x1, y1, x2, y2, score) in each RGB image's own pixels; the video stage's entry."""
        found: list[np.ndarray | ImageError] = []
        for start in range(0, len(images), DETECT_BATCH):
            found.extend(self._detect(images[start : start + DETECT_BATCH]))
        return found

    def _detect(self, images: list[np.ndarray]) -> list[np.ndarray | ImageError]:
        """Boxes in original pixels per image; a detector failure on one image is that image's error."""
        if not images:
            return []
        scales = [detection_scale(im.shape[1], im.shape[0], self.options.detect_size) for im in images]
        small = [_downscale(im, s) for im, s in zip(images, scales)]
        # The smallest face worth scoring, at the scale that shrinks it most: smaller ones aren't looked for.
        min_canvas = int(self.options.min_size * min(scales))
        try:
            found = self.detector.detect(_canvas(small), min_canvas)
        except Exception:  # noqa: BLE001 - find the image that fails, the others go on
            found = None
        if found is None or len(found) != len(images):
            found = []
            for im in small:
                try:
                    found.append(self.detector.detect(_canvas([im]), min_canvas)[0])
                except Exception as exc:  # noqa: BLE001
                    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                    found.append(ImageError("face-detect-failed", f"face detection failed: {text}"))
        return [_rescale(f, s) for f, s in zip(found, scales)]

    def _crops(self, im: np.ndarray, boxes: np.ndarray) -> FaceCrops:
        faces, found = select_faces(boxes, im.shape[1], im.shape[0], self.options)
        if not faces:
            return FaceCrops([], found, None)
        a, b = self.pre.scale_and_shift()
        tensors, records, crops = [], [], []
        for (x1, y1, x2, y2, score), (crop, square) in zip(faces, crop_faces(im, faces, self.options, self.pre.size)):
            tensors.append(np.asarray(crop, dtype=np.float32).transpose(2, 0, 1) * a + b)
            bx, by = int(round(x1)), int(round(y1))
            records.append((bx, by, max(1, int(round(x2)) - bx), max(1, int(round(y2)) - by), score))
            crops.append(square)
        return FaceCrops(records, found, np.stack(tensors), crops)

    # -- scoring -------------------------------------------------------------------------

    def score(self, prepared, runtime: Runtime, verdict) -> list[ResultRow]:
        return score_faces(prepared, runtime, verdict, self.options.aggregation, self.batch_size)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        close = getattr(self.base, "close", None)
        if close is not None:
            close()


def image_verdict(face_p_fakes: Sequence[float], aggregation: str, threshold: float) -> tuple[str, float, float]:
    """An image's (label, p_fake, confidence) from its faces' p_fake: the most suspicious face, or their mean."""
    p_fake = float(max(face_p_fakes)) if aggregation == "max" else float(np.mean(face_p_fakes))
    label = "fake" if p_fake >= threshold else "real"
    return label, p_fake, p_fake if label == "fake" else 1.0 - p_fake


def score_faces(prepared, runtime: Runtime, verdict, aggregation: str = "max",
                batch_size: int = 64) -> list[ResultRow]:
    """Rows for a batch whose items are :class:`FaceCrops`: every crop of every image in shared runtime batches."""
    now = datetime.now(timezone.utc)
    errors: dict[int, ImageError] = dict(prepared.errors)
    items: dict[int, FaceCrops] = dict(zip(prepared.ok_index, prepared.items or []))
    owners = [(pos, k) for pos, item in items.items() for k in range(len(item.faces))]
    per_face: dict[tuple[int, int], tuple[str, float]] = {}
    if owners:
        stacked = np.concatenate([items[pos].tensors for pos in items if items[pos].tensors is not None])
        try:
            logits = np.concatenate([run_batched(runtime, stacked[k : k + batch_size])
                                     for k in range(0, len(stacked), batch_size)])
            if logits.shape[0] != len(owners) or not np.all(np.isfinite(logits)):
                raise InferenceFailed(f"runtime returned {logits.shape} non-finite or misshapen logits")
        except InferenceFailed as exc:
            for pos, item in items.items():
                if item.faces:
                    errors[pos] = ImageError("inference-failed", f"inference failed: {exc}")
        else:
            for owner, (label, p_fake, _conf) in zip(owners, verdict.rows(logits)):
                per_face[owner] = (label, p_fake)
    rows = []
    for i, path in enumerate(prepared.paths):
        size, mtime = prepared.sizes[i], prepared.mtimes[i]
        item = items.get(i)
        if i in errors or item is None:
            err = errors[i]
            rows.append(ResultRow.error_row(path, size, mtime, err.code, err.message, now))
            continue
        if not item.faces:
            rows.append(ResultRow(path, size, mtime, "no-face", None, None, None, None, None, now,
                                  faces=0, faces_found=item.found))
            continue
        face_rows = []
        ps = []
        for k, (x, y, w, h, det) in enumerate(item.faces):
            label, p = per_face[(i, k)]
            ps.append(p)
            face_rows.append(FaceRow(k, x, y, w, h, det, p, label))
        label, p_fake, conf = image_verdict(ps, aggregation, verdict.threshold)
        rows.append(ResultRow(path, size, mtime, "ok", label, p_fake, conf, None, None, now,
                              faces=len(face_rows), faces_found=item.found, face_rows=tuple(face_rows)))
    return rows


# -- helpers (the scan and training crop the same way) --------------------------------------


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


def crop_faces(im: np.ndarray, faces, options: FaceOptions, size: tuple[int, int]):
    """``(crop resized to size (H, W), (x0, y0, side))`` per face: a square of margin x the box, inside the image."""
    h, w = im.shape[:2]
    pil = Image.fromarray(im)
    th, tw = size
    out = []
    for x1, y1, x2, y2, _score in faces:
        x0, y0, side = crop_square((x1, y1, x2, y2), w, h, options.margin)
        crop = pil.resize((tw, th), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
        out.append((crop, (x0, y0, side)))
    return out


def largest_face(im: np.ndarray, stage: "FaceStage") -> tuple[Image.Image, tuple[int, int, int]] | None:
    """The crop of the largest face of one RGB image and its square, as the scan makes them; None without a face."""
    (boxes,) = stage._detect([im])
    if isinstance(boxes, ImageError):
        return None
    faces, _found = select_faces(boxes, im.shape[1], im.shape[0], stage.options)
    if not faces:
        return None
    return crop_faces(im, faces[:1], stage.options, stage.pre.size)[0]




def _downscale(im: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return im
    h, w = im.shape[:2]
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return np.asarray(Image.fromarray(im).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))


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
