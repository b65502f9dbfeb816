"""Decided items as a training set: the layout ``dfscan train`` reads, so the next model learns from the team's content.

``OUT/real/`` and ``OUT/fake/`` (the flat layout of :mod:`detector.data`,
split 70/15/15 by ``dfscan train``) hold the images decided ``real`` and
``fake``, their bytes copied unchanged; decided videos go to
``OUT/videos/real/`` and ``OUT/videos/fake/``, a video data set of their own
(a data set is images or videos, never both). With ``faces`` the images'
face crops are written instead, as PNG (no second lossy compression): each
stored face box cut as the scan cut it (:func:`workers.faces.crop_square`,
the scan's margin) at full resolution. An image decided real gives every
face; one decided fake gives its most suspicious face only (its other faces
may be real).

Each file is read as a scan reads it: confined to its scan's roots when the
scan followed no link, ``s3://`` objects through the scan's endpoint, and
its bytes checked against the scan's content hash (a file changed since the
decision is not exported). ``OUT/manifest.csv`` has one row per decided
item (one per face with ``faces``): what was exported where, or why not.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfscan.detector.data import IMAGE_EXTENSIONS
from dfscan.detector.reviews import DECIDED, ReviewError

__all__ = ["MANIFEST_FIELDS", "MANIFEST_NAME", "VIDEO_DIR", "ExportSummary", "export_reviews"]

MANIFEST_NAME = "manifest.csv"
VIDEO_DIR = "videos"
MANIFEST_FIELDS = ("scan_id", "path", "decision", "face", "outcome", "file", "reason")
# The suffix a file gets when its own is not one `dfscan train` lists, by the format its header claims.
_SUFFIX_OF_FORMAT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ExportSummary:
    out: Path
    manifest: Path
    exported: dict[str, int]  # images (or face crops) per class
    videos: dict[str, int]  # videos per class, under OUT/videos
    skipped: dict[str, int]  # reason code -> items (or faces)
    faces: bool

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "manifest": str(self.manifest), "exported": self.exported,
                "videos": self.videos, "skipped": self.skipped, "faces": self.faces}


class _Writer:
    """Files and manifest rows of one export."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.rows: list[dict[str, Any]] = []
        self.exported: Counter[str] = Counter()
        self.videos: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()

    def skip(self, item, code: str, reason: str, face: int | None = None) -> None:
        self.skipped[code] += 1
        self.rows.append({"scan_id": item.scan_id, "path": item.path, "decision": item.decision,
                          "face": "" if face is None else face, "outcome": "skipped", "file": "",
                          "reason": f"{code}: {reason}"})

    def write(self, item, folder: Path, name: str, data: bytes, face: int | None = None,
              video: bool = False) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
        (self.videos if video else self.exported)[item.decision] += 1
        self.rows.append({"scan_id": item.scan_id, "path": item.path, "decision": item.decision,
                          "face": "" if face is None else face, "outcome": "exported",
                          "file": target.relative_to(self.out).as_posix(), "reason": ""})

    def manifest(self) -> Path:
        path = self.out / MANIFEST_NAME
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)
        return path


def _name(item, suffix: str) -> str:
    """A unique, safe file name: the scan, the path's key, then the original name's safe characters."""
    from dfscan.db.paths import path_hash

    stem = _UNSAFE.sub("_", Path(item.path).stem)[:60].strip("._") or "file"
    return f"{item.scan_id}-{path_hash(item.path).hex()[:12]}-{stem}{suffix}"


def _suffix(path: str, header_format: str | None) -> str | None:
    own = Path(path).suffix.lower()
    return own if own in IMAGE_EXTENSIONS else _SUFFIX_OF_FORMAT.get(header_format or "")


def export_reviews(session, scan_ids: Sequence[int], out: Path, *, faces: bool = False) -> ExportSummary:
    """Write the decided items of ``scan_ids`` to ``out`` (which must be new or empty) in ``dfscan train``'s layout."""
    from dfscan import db

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReviewError(f"{out} is not an empty folder; export into a new one (an old export would mix in)")
    scan_ids = sorted(set(int(s) for s in scan_ids))
    if not scan_ids:
        raise ReviewError("name at least one scan whose decisions to export")
    audits = {sid: db.scan_audit(session, sid) for sid in scan_ids}  # ScanNotFound for an unknown id
    items = db.current_decisions(session, scan_ids)
    boxes = _face_boxes(session, [i for i in items if i.decision in DECIDED]) if faces else {}
    for name in DECIDED:
        (out / name).mkdir(parents=True, exist_ok=True)
    w = _Writer(out)
    seen: dict[str, tuple[str, str]] = {}  # content hash -> (decision, path) of its first export
    conflicting = _conflicting(items)
    readers = _Readers(audits)
    for item in items:
        if item.decision not in DECIDED:
            w.skip(item, str(item.decision), "decided neither fake nor real")
            continue
        if item.status not in ("ok", "no-face") or (faces and item.status != "ok"):
            w.skip(item, "not-scored", f"the scan's row is {item.status or 'missing'}"
                   + (" (no face)" if item.status == "no-face" else ""))
            continue
        if item.content_hash in conflicting:
            w.skip(item, "conflicting", "the same bytes are decided fake in one place and real in another")
            continue
        if item.content_hash and item.content_hash in seen:
            w.skip(item, "duplicate", f"the same bytes as {seen[item.content_hash][1]}, exported once")
            continue
        if item.kind == "video" and faces:
            w.skip(item, "video", "face crops are exported from images only")
            continue
        try:
            data, header_format = readers.read(item)
        except _Unreadable as exc:
            w.skip(item, exc.code, exc.reason)
            continue
        if item.content_hash:
            seen[item.content_hash] = (item.decision, item.path)
        if item.kind == "video":
            w.write(item, out / VIDEO_DIR / item.decision, _name(item, Path(item.path).suffix.lower() or ".mp4"),
                    data, video=True)
        elif faces:
            _write_faces(w, item, data, boxes.get((item.scan_id, item.path), []), audits[item.scan_id])
        else:
            suffix = _suffix(item.path, header_format)
            if suffix is None:
                w.skip(item, "format", f"{header_format or 'an unknown format'} is not an image `dfscan train` reads")
                continue
            w.write(item, out / item.decision, _name(item, suffix), data)
    manifest = w.manifest()
    return ExportSummary(out, manifest, {c: w.exported[c] for c in DECIDED}, {c: w.videos[c] for c in DECIDED},
                         dict(sorted(w.skipped.items())), faces)


def _conflicting(items) -> set[str]:
    """Content hashes decided fake for one file and real for another."""
    decisions: dict[str, set[str]] = {}
    for item in items:
        if item.decision in DECIDED and item.content_hash:
            decisions.setdefault(item.content_hash, set()).add(item.decision)
    return {h for h, d in decisions.items() if len(d) > 1}


class _Unreadable(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class _Readers:
    """Reads a decided file as its scan read it: confined to the scan's roots, objects through its endpoint."""

    def __init__(self, audits: dict[int, dict]) -> None:
        self.audits = audits
        self._roots: dict[int, Any] = {}
        self._stores: dict[int, Any] = {}

    def read(self, item) -> tuple[bytes, str | None]:
        from dfscan.scanner.confine import roots_from_record
        from dfscan.scanner.objects import is_object_url, store_of_scan
        from dfscan.scanner.paths import on_disk
        from dfscan.workers.reading.errors import ImageError
        from dfscan.workers.reading.reader import read_file
        from dfscan.workers.scoring.dedupe import content_hash

        audit = self.audits[item.scan_id]
        if item.scan_id not in self._roots:
            self._roots[item.scan_id] = roots_from_record(audit.get("walk"))
        store = None
        if is_object_url(on_disk(item.path)):
            if item.scan_id not in self._stores:
                self._stores[item.scan_id] = store_of_scan(audit)
            store = self._stores[item.scan_id]
        try:
            f = read_file(item.path, store=store, roots=self._roots[item.scan_id])
        except ImageError as exc:
            raise _Unreadable(exc.code, exc.message) from None
        if item.content_hash and content_hash(f.data) != item.content_hash:
            raise _Unreadable("changed", "the file's bytes are not those the scan scored (changed since)")
        return f.data, f.header.format


def _face_boxes(session, items) -> dict[tuple[int, str], list[tuple[int, int, int, int, int, float]]]:
    """(face_index, x, y, w, h, p_fake) of each decided image's scored faces, by (scan_id, path)."""
    from sqlalchemy import select

    from dfscan.db.models import scan_faces

    f = scan_faces.c
    wanted: dict[int, set[str]] = {}
    for item in items:
        wanted.setdefault(item.scan_id, set()).add(item.path)
    out: dict[tuple[int, str], list] = {}
    for scan_id, paths in wanted.items():
        ordered = sorted(paths)
        for start in range(0, len(ordered), 500):
            rows = session.execute(
                select(f.scan_id, f.path, f.face_index, f.x, f.y, f.w, f.h, f.p_fake)
                .where(f.scan_id == scan_id, f.path.in_(ordered[start : start + 500]))
                .order_by(f.path, f.face_index)
            )
            for r in rows:
                out.setdefault((r.scan_id, r.path), []).append((r.face_index, r.x, r.y, r.w, r.h, r.p_fake))
    return out


def _write_faces(w: _Writer, item, data: bytes, faces: list, audit: dict) -> None:
    """The crops of ``faces`` of one image: every face of a real image, the most suspicious face of a fake one."""
    from dfscan.core.constants import DEFAULT_MAX_PIXELS
    from dfscan.workers.faces import FaceOptions, crop_square
    from dfscan.workers.images.decode import load_rgb
    from dfscan.workers.reading.errors import ImageError

    if not faces:
        w.skip(item, "no-faces", "the scan stored no face for it (scan with --faces on to export crops)")
        return
    if item.decision == "fake":
        top = max(faces, key=lambda f: f[5])
        for face in faces:
            if face is not top:
                w.skip(item, "other-face", "another face of an image decided fake: only its most suspicious face "
                                           "is exported", face=face[0])
        faces = [top]
    try:
        im = load_rgb(data, None, int(audit.get("max_pixels") or DEFAULT_MAX_PIXELS))
    except ImageError as exc:
        for face in faces:
            w.skip(item, exc.code, exc.message, face=face[0])
        return
    margin = float(((audit.get("faces") or {}).get("margin")) or FaceOptions().margin)
    for index, x, y, fw, fh, _p in faces:
        x0, y0, side = crop_square((x, y, x + fw, y + fh), im.width, im.height, margin)
        buf = io.BytesIO()
        im.crop((x0, y0, x0 + side, y0 + side)).save(buf, format="PNG")
        w.write(item, w.out / item.decision, _name(item, f"-face{index}.png"), buf.getvalue(), face=index)
    im.close()
