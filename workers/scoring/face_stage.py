"""Faces on: the image stage's decoder finds the faces of each image and crops them; the image takes their verdict.

The product's detector was trained on aligned face crops; a whole photo resized
to its input is nothing it has seen.  With faces on, each image is decoded to
RGB once (oriented), the detector looks at a downscaled copy (batched across
images: a sub-batch shares one canvas), and each face is cropped from the
full-resolution image as a square of ``margin`` times the face box (clamped
to the image), resized to the model's input and normalised like a whole
image.  The full-resolution images of a sub-batch are all held at once, so a
sub-batch is cut by their decoded bytes (``max_decode_bytes``) as well as by
count (:data:`~dfscan.workers.faces.DETECT_BATCH`).  Each crop is one input of the infer stage (the crops of every image
of a batch share runtime calls); the image's p_fake is the max (or mean) over
its faces, and an image without a face gets the status ``no-face``: neither a
verdict nor an error.  Detection and geometry are :mod:`dfscan.workers.faces`'.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from PIL import Image

from dfscan.db.records import FaceRow, ResultRow
from dfscan.workers.hashing import PdqHash, pdq
from dfscan.workers.images.decode import Preprocess, load_rgb, open_image
from dfscan.workers.faces import (DETECT_BATCH, FaceDetector, FaceFinder, FaceOptions, RGBImage, create_face_detector,
                                  crop_faces, image_size, select_faces)
from dfscan.workers.reading.errors import ImageError
from dfscan.workers.reading.reader import FileData
from dfscan.workers.scoring.stages import Input, Item
from dfscan.workers.scoring.verdict import Decision, Verdict



@dataclass
class FaceCrops:
    """One image through the face decoder: its scored faces (largest first), how many were found, their tensors.

    A :class:`~dfscan.workers.scoring.stages.Payload`: each face's crop is one
    input; the image's verdict is its faces' by ``aggregation`` (the most
    suspicious face, or their mean), and an image without a face is
    ``no-face``: neither a verdict nor an error.
    """

    faces: list[tuple[int, int, int, int, float]]  # x, y, w, h (original pixels), detector score
    found: int
    tensors: np.ndarray | None  # (len(faces), 3, H, W) float32
    crops: list[tuple[int, int, int]] = field(default_factory=list)  # x0, y0, side of each crop
    aggregation: str = "max"
    kind: str = "image"
    # The whole image's PDQ, from the detector's downscaled copy (the hash stage takes it: no second decode).
    pdq: PdqHash | None = None

    def inputs(self) -> list[Input]:
        return [Input("image", t) for t in self.tensors] if self.tensors is not None else []

    def row(self, item: Item, decisions: list[Decision], verdict: Verdict, now: datetime) -> ResultRow:
        if not self.faces:
            return ResultRow(item.path, item.size, item.mtime, "no-face", None, None, None, None, None, now,
                             faces=0, faces_found=self.found)
        face_rows = tuple(FaceRow(k, x, y, w, h, det, d.p_fake, d.label)
                          for k, ((x, y, w, h, det), d) in enumerate(zip(self.faces, decisions)))
        image = verdict.aggregate([d.p_fake for d in decisions], self.aggregation)
        if isinstance(image, ImageError):
            return ResultRow.error_row(item.path, item.size, item.mtime, image.code, image.message, now)
        return ResultRow(item.path, item.size, item.mtime, "ok", image.label, image.p_fake, image.confidence, None,
                         None, now, faces=len(face_rows), faces_found=self.found, face_rows=face_rows)


def face_decoder(decoder, pre: Preprocess, settings) -> "FaceDecoder":
    """``decoder`` with faces on top, configured from ``settings``."""
    detector = create_face_detector(settings.face_detector)
    hasher = (lambda rgb: pdq(rgb, dihedral=settings.pdq_dihedral)) if settings.pdq else None
    return FaceDecoder(decoder, pre, FaceOptions.from_settings(settings), detector, threads=settings.decode_threads,
                       hasher=hasher)


def faces_enabled(mode: str, model_input: str) -> bool:
    """``on``/``off`` force it; ``auto`` follows what the model was trained on."""
    return mode == "on" or (mode == "auto" and model_input == "face-crop")


class FaceDecoder:
    """A decoder with faces: ``decode_batch(files) -> [FaceCrops | ImageError]``, for the image stage.

    ``base`` decodes; when it can hand over oriented RGB images
    (``decode_rgb_batch``, e.g. DALI's decoded tensor) those are used, else
    Pillow decodes them (once: no model-size tensor is made from the file).
    """

    thread_safe = False  # one caller at a time: the lanes below are its own

    # Sub-batches decoded, detected and cropped at once when Pillow decodes: MTCNN runs on one thread (more
    # intra-op threads lose on its small convolutions), so a face stage running alone (a scan's first batch,
    # a batch while the classifier waits) would leave the other core idle.  Two lanes share the decoded-bytes
    # budget, each holding at most half of it.
    LANES = 2

    def __init__(self, base, pre: Preprocess, options: FaceOptions, detector: FaceDetector,
                 threads: int = 2, hasher: Callable[[np.ndarray], PdqHash] | None = None) -> None:
        self.base = base
        # The whole image's hash from the detector's copy (hash stage on): decoding and hashing the
        # full-resolution image again cost the scan about as much as detecting its faces.
        self.hasher = hasher
        self.pre = pre
        self.options = options
        self.detector = detector
        self.finder = FaceFinder(detector, options)
        self.name = f"{getattr(base, 'name', 'pillow')}+{detector.name}"
        self.version = getattr(base, "version", None)
        self.device = getattr(base, "device", "cpu")
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="faces")
        # A base decoder that hands over its own RGB images (DALI: one pipeline, not thread-safe) runs one lane.
        self._lanes = 1 if hasattr(base, "decode_rgb_batch") else max(1, min(self.LANES, threads))
        self._lane_pool = (ThreadPoolExecutor(max_workers=self._lanes, thread_name_prefix="face-lane")
                           if self._lanes > 1 else None)

    # -- decoding and detection -------------------------------------------------------------

    def _rgb_batch(self, files: Sequence[FileData]) -> list[RGBImage | ImageError]:
        hook = getattr(self.base, "decode_rgb_batch", None)
        if hook is not None:
            return hook(files)
        return list(self._pool.map(self._rgb_one, files))

    def _rgb_one(self, f: FileData) -> Image.Image | ImageError:
        """The oriented RGB image, as Pillow holds it: no array copy of the full-resolution pixels."""
        try:
            return load_rgb(f.data, None, self.pre.max_pixels, f.header, self.pre.max_decode_bytes)
        except ImageError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - a decoder bug is this image's error
            return ImageError("decode-failed", f"decode failed: {str(exc)[:200]}")

    def decode_batch(self, files: Sequence[FileData]) -> list[FaceCrops | ImageError]:
        out: list[FaceCrops | ImageError | None] = [None] * len(files)
        lane_budget = self.pre.max_decode_bytes // self._lanes
        groups = list(self._groups(files, lane_budget))
        # Lanes run together only while each holds at most its share (an image alone over it runs alone).
        together = self._lane_pool is not None and len(groups) > 1 and all(h <= lane_budget for _, h in groups)
        decode = self._decode_group
        parts = [[files[i] for i in group] for group, _ in groups]
        done = self._lane_pool.map(decode, parts) if together else map(decode, parts)
        for (group, _), crops in zip(groups, done):
            for i, one in zip(group, crops):
                out[i] = one
        return out  # type: ignore[return-value]

    def _groups(self, files: Sequence[FileData], budget: int) -> Iterator[tuple[list[int], int]]:
        """Positions decoded and detected together, with their decoded bytes: at most :data:`DETECT_BATCH`,
        and no more decoded bytes than ``budget`` (an image alone over it is its own group; one over the
        whole budget is refused by its decoder)."""
        group: list[int] = []
        held = 0
        for i, f in enumerate(files):
            need = self._held_bytes(f)
            if group and (len(group) == DETECT_BATCH or held + need > budget):
                yield group, held
                group, held = [], 0
            group.append(i)
            held += need
        if group:
            yield group, held

    def _held_bytes(self, f: FileData) -> int:
        """What ``f`` holds once decoded to RGB (4 bytes a pixel in Pillow), from its header; 0 if it has none."""
        pixels = f.header.pixels
        if pixels is None:  # a header the sniffer doesn't size (TIFF): Pillow's parse, no pixels decoded
            try:
                im = open_image(f.data, self.pre.max_pixels, f.header)
            except Exception:  # noqa: BLE001 - its decoder reports it
                return 0
            pixels = im.width * im.height
            im.close()
        return 4 * pixels

    def _decode_group(self, files: Sequence[FileData]) -> list[FaceCrops | ImageError]:
        """One group's crops: its full-resolution images live only while this runs."""
        rgbs = self._rgb_batch(files)
        images = [(i, im) for i, im in enumerate(rgbs) if not isinstance(im, ImageError)]
        boxes, hashes = self._find_hashed([im for _, im in images])
        part: list = list(rgbs)  # errors stay where they are
        for (i, im), found, hashed in zip(images, boxes, hashes):
            if isinstance(found, ImageError):
                part[i] = found
            else:
                part[i] = self._crops(im, found)
                part[i].pdq = hashed
        return part

    def _find(self, images: list) -> list:
        """Face boxes per image (the tensor path finds them on the device)."""
        return self.finder.detect(images)

    def _find_hashed(self, images: list) -> tuple[list, list[PdqHash | None]]:
        """Face boxes per image, and with a ``hasher`` each image's PDQ from the copy the detector read (the
        tensor path, which finds faces on the device, has none: the hash stage decodes those files again)."""
        if self.hasher is None:
            return self._find(images), [None] * len(images)
        boxes, canvases = self.finder.detect_canvases(images)
        return boxes, [self._hash(c) for c in canvases]

    def _hash(self, canvas: np.ndarray) -> PdqHash | None:
        """PDQ of one copy; None where it fails (the hash stage then hashes the file as it would without faces)."""
        try:
            return self.hasher(canvas)  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - the hash stage's own path decides this image's hash
            return None

    def _crops(self, im: RGBImage, boxes: np.ndarray) -> FaceCrops:
        faces, found = select_faces(boxes, *image_size(im), self.options)
        if not faces:
            return FaceCrops([], found, None, aggregation=self.options.aggregation)
        records = []
        for x1, y1, x2, y2, score in faces:
            bx, by = int(round(x1)), int(round(y1))
            records.append((bx, by, max(1, int(round(x2)) - bx), max(1, int(round(y2)) - by), score))
        tensors, crops = self._cut(im, faces)
        return FaceCrops(records, found, tensors, crops, self.options.aggregation)

    def _cut(self, im: RGBImage, faces: list) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """The faces' crops as the model's normalised (n, 3, H, W) inputs, and their squares (x0, y0, side)."""
        a, b = self.pre.scale_and_shift()
        tensors, crops = [], []
        for crop, square in crop_faces(im, faces, self.options, self.pre.size):
            tensors.append(np.asarray(crop, dtype=np.float32).transpose(2, 0, 1) * a + b)
            crops.append(square)
        return np.stack(tensors), crops

    def close(self) -> None:
        if self._lane_pool is not None:
            self._lane_pool.shutdown(wait=True)
        self._pool.shutdown(wait=True)
        close = getattr(self.base, "close", None)
        if close is not None:
            close()


def largest_face(im: RGBImage, stage: "FaceDecoder") -> tuple[Image.Image, tuple[int, int, int]] | None:
    """The crop of the largest face of one RGB image and its square, as the scan makes them; None without a face."""
    (boxes,) = stage.finder.detect([im])
    if isinstance(boxes, ImageError):
        return None
    faces, _found = select_faces(boxes, *image_size(im), stage.options)
    if not faces:
        return None
    return crop_faces(im, faces[:1], stage.options, stage.pre.size)[0]




