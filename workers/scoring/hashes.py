"""The hash stage: each decoded image's PDQ, and each whole video frame's, for the bank match and the row.

In the prepare phase (beside decoding, ahead of the model), from the pixels
the scan already decoded, oriented: an image's tensor taken back to 8-bit RGB,
a video's whole frames (faces off) as they wait for the model.  Those are at
the model's input size (224 x 224 for the product's model): PDQ of them is
within a few bits of the full-size image's for photographs (measured: 6-22 of
256 on scikit-image's photographs; HMA matches within 31).  With faces on the
decoders keep only face crops: an image's hash comes with them, made by the
face stage from the detector's downscaled copy of the whole image (2-8 bits
from the full-size image's on the face bench's photos), or where it has none
the stage decodes the file's whole image again, at full size; a video's frames
are decoded again at the times the scan sampled
(every frame row of a frame, one per face, carries that frame's hash).  A
video's frames are deduplicated as vPDQ does: a frame
within :data:`~dfscan.workers.hashing.MATCH_DISTANCE` of an earlier frame of
the same video is not matched again.  The match itself is the score phase's
(:mod:`.matches`); :class:`Hashed` puts the hashes and matches on the row.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from dfscan.db.records import MatchRow, ResultRow
from dfscan.workers.hashing import MATCH_DISTANCE, MIN_QUALITY, PdqHash, hamming, pdq
from dfscan.workers.images import Preprocess
from dfscan.workers.images.decode import load_rgb
from dfscan.workers.reading import MAX_FILE_BYTES, ImageError, read_head
from dfscan.workers.scoring.stages import Batch, Item, TensorPayload
from dfscan.workers.scoring.video_stage import VideoItem
from dfscan.workers.video.sample import frames_at

if TYPE_CHECKING:
    from dfscan.workers.scoring.context import Resources
    from dfscan.workers.scoring.stages import Job

__all__ = ["HashStage", "Hashed", "hash_stage", "pdq_of_bytes", "pixels_of_tensor"]

LOW_QUALITY_NOTE = "PDQ quality {q} under " + str(MIN_QUALITY) + ": hash stored, not matched"


@dataclass
class Hashed:
    """What the hash stage found for one item, and later the matches; :meth:`stamp` puts both on its row."""

    image: PdqHash | None = None
    frames: list[tuple[int, PdqHash]] = field(default_factory=list)  # (frame index, PDQ) of whole frames
    matched: bool = False  # matched against the banks (else ``matches`` stays NULL)
    match_rows: list[MatchRow] = field(default_factory=list)

    def unique_frames(self) -> list[tuple[int, PdqHash]]:
        """The frames vPDQ would keep: each not within the match distance of an earlier kept one."""
        kept: list[tuple[int, PdqHash]] = []
        for index, h in self.frames:
            if all(hamming(h.hex, k.hex) > MATCH_DISTANCE for _, k in kept):
                kept.append((index, h))
        return kept

    def note(self) -> str | None:
        if self.image is not None and not self.image.matchable:
            return LOW_QUALITY_NOTE.format(q=self.image.quality)
        low = [h.quality for _, h in self.frames if not h.matchable]
        if low and len(low) == len(self.frames):
            return LOW_QUALITY_NOTE.format(q=max(low))
        return None

    def stamp(self, row: ResultRow) -> ResultRow:
        changes: dict = {}
        if self.image is not None:
            changes.update(pdq=self.image.hex, pdq_quality=self.image.quality)
        if self.frames and row.frame_rows:
            by_index = {index: h.hex for index, h in self.frames}
            changes["frame_rows"] = tuple(replace(f, pdq=by_index.get(f.frame_index)) for f in row.frame_rows)
        if self.matched:
            changes.update(matches=len(self.match_rows), match_rows=tuple(self.match_rows))
        note = self.note()
        if note is not None:
            changes["notes"] = f"{row.notes}; {note}" if row.notes else note
        return replace(row, **changes) if changes else row


def pixels_of_tensor(tensor: np.ndarray, pre: Preprocess) -> np.ndarray:
    """A normalised (3, H, W) float tensor back to the (H, W, 3) uint8 pixels it was made from."""
    a, b = pre.scale_and_shift()
    rgb = (np.asarray(_on_host(tensor), dtype=np.float32) - b) / a
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def _on_host(array):
    """A torch tensor on the runtime's device (--batches device) copied to the host; a NumPy array as it is."""
    return array.cpu().numpy() if hasattr(array, "cpu") else array


def pdq_of_bytes(data: bytes, max_pixels: int, *, dihedral: bool = False) -> PdqHash:
    """PDQ of an image file's bytes, decoded whole and oriented (raises :class:`ImageError`)."""
    return pdq(np.asarray(load_rgb(data, None, max_pixels)), dihedral=dihedral)


class HashStage:
    """Gives each image and video of a batch its :class:`Hashed` (``Item.hashes``); an unhashable one keeps none."""

    name = "hash"
    phase = "prepare"

    def __init__(self, pre: Preprocess, *, dihedral: bool = False, store=None) -> None:
        self.pre = pre
        self.dihedral = dihedral
        self.store = store

    def cost(self, path: str) -> int | None:
        return None

    def run(self, batch: Batch, job: "Job | None" = None) -> None:
        for item in batch.items:
            if item.payload is not None and item.error is None and item.copy_of is None:
                try:
                    item.hashes = self._hashed(item, job.roots if job is not None else None)
                except ImageError:
                    item.hashes = None  # the model still scores what it decoded; the row has no hash

    def _hashed(self, item: Item, roots: tuple[str, ...] | None) -> Hashed | None:
        payload = item.payload
        if isinstance(payload, TensorPayload):
            return Hashed(image=pdq(pixels_of_tensor(payload.tensor, self.pre), dihedral=self.dihedral))
        if isinstance(payload, VideoItem):
            whole = [t for t in payload.tracks if all(box is None for box in t.boxes)]
            if whole:
                frames = _on_host(whole[0].crops)
                return Hashed(frames=[(index, pdq(frame)) for index, frame in zip(payload.indices, frames)])
            return self._frames_again(item.path, payload, roots)
        if getattr(payload, "pdq", None) is not None:  # faces on: hashed from the face detector's copy
            return Hashed(image=payload.pdq)
        f = read_head(item.path, MAX_FILE_BYTES, head_bytes=max(item.size or 0, 1), store=self.store, roots=roots)
        return Hashed(image=pdq_of_bytes(f.data, self.pre.max_pixels, dihedral=self.dihedral))

    def _frames_again(self, path: str, video: VideoItem, roots: tuple[str, ...] | None) -> Hashed | None:
        """Faces on: only face crops were kept, so the whole frames at the times the scan took are decoded again."""
        if not video.timestamps_s:
            return None
        again = frames_at(path, video.timestamps_s, store=self.store, roots=roots, max_pixels=self.pre.max_pixels)
        return Hashed(frames=[(video.indices[target], pdq(frame)) for target, frame in zip(again.indices, again.frames)])

    def record(self) -> dict | None:
        return {"pdq": True, "dihedral": self.dihedral}

    def close(self) -> None:
        pass


def hash_stage(res: "Resources") -> HashStage | None:
    if not res.settings.pdq:
        return None
    return HashStage(res.pre, dihedral=res.settings.pdq_dihedral, store=res.store)
