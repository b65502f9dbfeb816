"""What earlier result rows already tell about a file, so that it is not scored again.

Two lookups, both served by indexes of ``results``:

* by content (:func:`known_verdicts`), the lookup behind "each distinct image
  scored once";
* by path and stat (:func:`unchanged_paths`), the lookup behind an
  incremental scan, which skips the files unchanged since a finished row of
  the same model.

A batch about to be scored asks, in one query, which of its content hashes
already have a row it can copy (:func:`known_verdicts`):

* in this scan: a row scored here (``computed``) or reused here, that is
  ``ok`` or ``no-face``, or an error that depends on the bytes alone
  (:data:`CONTENT_ERRORS`: a file that is no image stays no image); errors of
  the moment (``inference-failed``, unreadable files) are tried again;
* with ``reuse``: an ``ok`` row that an earlier scan (a smaller id) computed
  with the same model, scored the same way (faces on, or off).

The face rows of the row found come with it (a left join), so a copy has
the same faces as its original.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import and_, case, or_, select
from sqlalchemy.orm import Session

from .models import Result, ResultFace, Scan
from .paths import path_hash
from .records import FaceRow, ResultRow

__all__ = ["CONTENT_ERRORS", "KnownVerdict", "known_verdicts", "unchanged_paths"]

# Error codes that the bytes alone decide: a copy of such a file gets the same error without a try.
CONTENT_ERRORS = ("not-image", "too-many-pixels", "truncated", "decode-failed", "bad-probability")
_IN_LIST_SIZE = 500


@dataclass(frozen=True)
class KnownVerdict:
    """A stored row whose verdict other files with its bytes can take; ``scan_id`` says which scan wrote it."""

    scan_id: int
    row: ResultRow


def known_verdicts(session: Session, *, scan_id: int, model_id: int, hashes: Iterable[str | None],
                   reuse: bool = False, faces: bool = False) -> dict[str, KnownVerdict]:
    """For each of ``hashes`` that has one, the row to copy: this scan's first, else an earlier scan's newest.

    ``reuse`` allows rows of earlier scans (same ``model_id``, ``ok``, scored
    with faces on if ``faces``, else whole); without it only this scan's rows
    count.  One query per 500 hashes (a batch is one).
    """
    wanted = list(dict.fromkeys(h for h in hashes if h))
    found: dict[str, KnownVerdict] = {}
    for start in range(0, len(wanted), _IN_LIST_SIZE):
        found.update(_lookup(session, scan_id, model_id, wanted[start : start + _IN_LIST_SIZE], reuse, faces))
    return found


def _lookup(session: Session, scan_id: int, model_id: int, hashes: list[str], reuse: bool,
            faces: bool) -> dict[str, KnownVerdict]:
    here = and_(
        Result.scan_id == scan_id,
        Result.verdict_source.in_(("computed", "reused")),
        or_(Result.status.in_(("ok", "no-face")), Result.error_code.in_(CONTENT_ERRORS)),
    )
    where = here
    if reuse:
        # Only computed rows: one per scan that scored the content, however many copies it had.
        earlier = and_(
            Result.scan_id < scan_id,
            Result.model_id == model_id,
            Result.status == "ok",
            Result.verdict_source == "computed",
            Result.faces.is_not(None) if faces else Result.faces.is_(None),
        )
        where = or_(here, earlier)
    stmt = (
        select(Result.path_hash, Result.scan_id, Result.path, Result.size, Result.mtime, Result.status, Result.label,
               Result.p_fake, Result.confidence, Result.error, Result.error_code, Result.scanned_at, Result.faces,
               Result.faces_found, Result.content_hash, Result.verdict_source, Result.etag,
               ResultFace.face_index, ResultFace.x, ResultFace.y, ResultFace.w, ResultFace.h,
               ResultFace.detector_score, ResultFace.p_fake.label("face_p_fake"), ResultFace.label.label("face_label"))
        .outerjoin(ResultFace, and_(ResultFace.scan_id == Result.scan_id, ResultFace.path_hash == Result.path_hash))
        .where(Result.content_hash.in_(hashes), where)
        .order_by(Result.content_hash, case((Result.scan_id == scan_id, 0), else_=1), Result.scan_id.desc(),
                  Result.path_hash, ResultFace.face_index)
    )
    chosen: dict[str, tuple] = {}  # hash -> key of the row taken (the first in that order)
    heads: dict[str, object] = {}
    faces_of: dict[str, list[FaceRow]] = {}
    for r in session.execute(stmt):
        if chosen.setdefault(r.content_hash, (r.scan_id, r.path_hash)) != (r.scan_id, r.path_hash):
            continue
        heads.setdefault(r.content_hash, r)
        if r.face_index is not None:
            faces_of.setdefault(r.content_hash, []).append(
                FaceRow(r.face_index, r.x, r.y, r.w, r.h, r.detector_score, r.face_p_fake, r.face_label))
    return {
        h: KnownVerdict(r.scan_id, ResultRow(
            r.path, r.size, r.mtime, r.status, r.label, r.p_fake, r.confidence, r.error, r.error_code, r.scanned_at,
            faces=r.faces, faces_found=r.faces_found, face_rows=tuple(faces_of.get(h, ())), content_hash=h,
            verdict_source=r.verdict_source, etag=r.etag))
        for h, r in heads.items()
    }


def unchanged_paths(session: Session, *, model_id: int, scan_id: int,
                    stats: dict[str, tuple[int, float, str | None]]) -> set[str]:
    """Paths unchanged since an ``ok`` (or ``no-face``: a finished outcome) row of the same model in another scan.

    ``stats`` gives each path's (size, mtime, etag); etag is an ``s3://``
    object's ETag, None for a local file.  Where both it and the row have an
    etag, size and etag must match (an object rewritten within LastModified's
    second has a new ETag); otherwise, size and mtime (files, and rows written
    before migration 0012).

    Served by the primary key ``(scan_id, path_hash)`` of the model's other scans (``scans.model_id``: a
    scan's rows are its model's), one IN-list lookup per chunk of paths; on PostgreSQL only those scans'
    partitions are read.  ``results`` has no index on ``model_id`` (migration 0018: every index costs each
    written row).
    """
    out: set[str] = set()
    scans = list(session.scalars(select(Scan.id).where(Scan.model_id == model_id, Scan.id != scan_id)))
    if not scans:
        return out
    keys = [path_hash(p) for p in stats]
    for start in range(0, len(keys), _IN_LIST_SIZE):
        part = keys[start : start + _IN_LIST_SIZE]
        for path, size, mtime, etag in session.execute(
            select(Result.path, Result.size, Result.mtime, Result.etag).where(
                Result.scan_id.in_(scans),
                Result.path_hash.in_(part),
                Result.model_id == model_id,
                Result.status.in_(("ok", "no-face")),
            )
        ):
            now_size, now_mtime, now_etag = stats[path]
            same = etag == now_etag if etag is not None and now_etag is not None else mtime == now_mtime
            if size == now_size and same:
                out.add(path)
    return out
