"""Faces followed through a video's sampled frames by box overlap: pure geometry, no pixels.

Sampled frames are far apart in time (16 over a minute: one every 4 s), so a
face that moves may no longer overlap its last box: a face whose box does not
overlap enough still joins the track whose last box is near (centre within
:data:`MAX_JUMP` box sides) and of a similar size (within :data:`MAX_SCALE`).
Overlap wins over nearness when both could match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

Box = tuple[float, float, float, float]  # x1, y1, x2, y2

# A face in the next frame is the same face when its box overlaps the track's last box this much.
MIN_IOU = 0.3
# Without enough overlap: how far (in box sides) and how much bigger or smaller a face may be and still follow.
MAX_JUMP = 1.0
MAX_SCALE = 1.5
# A track must be seen in this share of the frames (at least one): one-frame false detections drop out.
MIN_SEEN = 0.25


@dataclass
class Track:
    """One face through the frames: its detected box per frame (``None`` where it was not found)."""

    boxes: list[Box | None]
    scores: list[float] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return sum(b is not None for b in self.boxes)

    def last(self) -> Box:
        return next(b for b in reversed(self.boxes) if b is not None)

    def filled(self) -> list[Box]:
        """A box for every frame: where the face was not found, the nearest frame's box where it was."""
        known = [i for i, b in enumerate(self.boxes) if b is not None]
        out = []
        for i, b in enumerate(self.boxes):
            if b is None:
                b = self.boxes[min(known, key=lambda k: (abs(k - i), k))]
            out.append(b)
        return out

    def mean_area(self) -> float:
        areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in self.boxes if b is not None]
        return sum(areas) / len(areas)


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def affinity(a: Box, b: Box) -> float:
    """How well box ``b`` continues box ``a``: above 1 by overlap, in (0, 1] by nearness, 0 not at all."""
    overlap = iou(a, b)
    if overlap >= MIN_IOU:
        return 1.0 + overlap
    side_a, side_b = max(a[2] - a[0], a[3] - a[1]), max(b[2] - b[0], b[3] - b[1])
    if min(side_a, side_b) <= 0 or max(side_a, side_b) / min(side_a, side_b) > MAX_SCALE:
        return 0.0
    dx = (a[0] + a[2] - b[0] - b[2]) / 2
    dy = (a[1] + a[3] - b[1] - b[3]) / 2
    jump = math.hypot(dx, dy) / max(side_a, side_b)
    return 0.0 if jump > MAX_JUMP else 1.0 - jump / (MAX_JUMP * 1.001)


def follow(per_frame: list[list[tuple[Box, float]]], max_tracks: int) -> tuple[list[Track], int]:
    """Tracks from each frame's face boxes (with detector scores), the most seen (then largest) first, capped;
    and how many were found.

    Greedy matching frame by frame: the pairs of (track, face) with the
    highest :func:`affinity` are joined first, each track and face at most
    once; a face that joins no track starts one.
    """
    n = len(per_frame)
    tracks: list[Track] = []
    for t, faces in enumerate(per_frame):
        pairs = sorted(
            ((affinity(track.last(), box), k, j) for k, track in enumerate(tracks) for j, (box, _s) in enumerate(faces)),
            key=lambda p: (-p[0], p[1], p[2]),
        )
        used_tracks: set[int] = set()
        used_faces: set[int] = set()
        for score, k, j in pairs:
            if score <= 0.0:
                break
            if k in used_tracks or j in used_faces or tracks[k].boxes[t] is not None:
                continue
            tracks[k].boxes[t] = faces[j][0]
            tracks[k].scores.append(faces[j][1])
            used_tracks.add(k)
            used_faces.add(j)
        for j, (box, score) in enumerate(faces):
            if j not in used_faces:
                boxes: list[Box | None] = [None] * n
                boxes[t] = box
                tracks.append(Track(boxes, [score]))
    need = max(1, math.ceil(MIN_SEEN * n))
    kept = [track for track in tracks if track.seen >= need]
    kept.sort(key=lambda track: (-track.seen, -track.mean_area()))
    return kept[:max_tracks], len(kept)
