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
from dfscan.workers.images.decode import Preprocess, load_rgb
from dfscan.workers.faces import (DETECT_BATCH, FaceDetector, FaceFinder, FaceOptions, create_face_detector, crop_faces,
                                  select_faces)
from dfscan.workers.reading.errors import ImageError
from dfscan.workers.reading.reader import FileData



# -- the stage ----------------------------------------------------------------------------


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
        self.finder = FaceFinder(detector, options)
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
            boxes = self.finder.detect([im for _, im in images])
            part: list[FaceCrops | ImageError] = list(rgbs)  # errors stay where they are
            for (i, im), found in zip(images, boxes):
                part[i] = found if isinstance(found, ImageError) else self._crops(im, found)
            out.extend(part)
        return out

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


def largest_face(im: np.ndarray, stage: "FaceStage") -> tuple[Image.Image, tuple[int, int, int]] | None:
    """The crop of the largest face of one RGB image and its square, as the scan makes them; None without a face."""
    (boxes,) = stage.finder.detect([im])
    if isinstance(boxes, ImageError):
        return None
    faces, _found = select_faces(boxes, im.shape[1], im.shape[0], stage.options)
    if not faces:
        return None
    return crop_faces(im, faces[:1], stage.options, stage.pre.size)[0]




