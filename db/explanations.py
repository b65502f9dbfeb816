"""Explanations of verdicts: one row per explained image (or face, or frame), heatmap overlay included.

``dfscan explain`` writes them; the report and analysts read them. A row is
either ``ok`` (a peak in original-image pixels and a small PNG overlay) or
``unexplainable`` with a reason code and a one-line detail, so every selected
image ends as exactly one row. Re-explaining a path replaces its rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import CheckConstraint, Double, ForeignKey, Index, LargeBinary, String, Text, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from ._types import BigIntPK, utcnow
from .models import Base
from .paths import path_hash

__all__ = ["Explanation", "ExplanationRow", "explanations_for", "write_explanations"]

# An overlay is a thumbnail, not an archive: the writer keeps PNGs under this size.
MAX_OVERLAY_BYTES = 64 * 1024
_IN_LIST_SIZE = 500


class Explanation(Base):
    """A class-activation heatmap of one image (face, frame) of a scan, or why there is none."""

    __tablename__ = "explanations"
    __table_args__ = (
        CheckConstraint("status IN ('ok', 'unexplainable')", name="status"),
        CheckConstraint(f"overlay IS NULL OR length(overlay) <= {MAX_OVERLAY_BYTES}", name="overlay_size"),
        Index("ix_explanations_scan_id_path_hash", "scan_id", "path_hash"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    path_hash: Mapped[bytes] = mapped_column(LargeBinary(16))  # dfscan.db.paths.path_hash(path): the key
    face_index: Mapped[int | None]  # NULL: the whole image
    frame_index: Mapped[int | None]  # NULL: a still image
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    p_fake: Mapped[float | None] = mapped_column(Double)  # the checkpoint's own score of what it explained
    peak_x: Mapped[int | None]  # original-image pixels, EXIF orientation applied
    peak_y: Mapped[int | None]
    width: Mapped[int | None]
    height: Mapped[int | None]
    method: Mapped[str] = mapped_column(String(64))
    target_layer: Mapped[str] = mapped_column(String(128))
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    overlay: Mapped[bytes | None] = mapped_column(LargeBinary)  # PNG
    created_at: Mapped[datetime]


@dataclass(frozen=True)
class ExplanationRow:
    """One explanation as plain values (what the writer takes and the reader gives back)."""

    path: str
    status: str
    method: str
    target_layer: str
    checkpoint_sha256: str
    reason: str | None = None
    detail: str | None = None
    p_fake: float | None = None
    peak_x: int | None = None
    peak_y: int | None = None
    width: int | None = None
    height: int | None = None
    overlay: bytes | None = None
    face_index: int | None = None
    frame_index: int | None = None

    def __post_init__(self) -> None:
        if self.status not in ("ok", "unexplainable"):
            raise ValueError(f"status {self.status!r}")
        if self.status == "unexplainable" and not self.reason:
            raise ValueError("an unexplainable row needs a reason")
        if self.overlay is not None and len(self.overlay) > MAX_OVERLAY_BYTES:
            raise ValueError(f"overlay of {len(self.overlay)} bytes is over {MAX_OVERLAY_BYTES}")


_FIELDS = tuple(ExplanationRow.__dataclass_fields__)


def write_explanations(session: Session, scan_id: int, rows: Sequence[ExplanationRow]) -> None:
    """Replace the explanations of the paths in ``rows`` with ``rows``. Does not commit."""
    paths = sorted({r.path for r in rows})
    for i in range(0, len(paths), _IN_LIST_SIZE):
        part = paths[i : i + _IN_LIST_SIZE]
        session.execute(delete(Explanation).where(Explanation.scan_id == scan_id,
                                                  Explanation.path_hash.in_([path_hash(p) for p in part])))
    now = utcnow()
    session.add_all(
        Explanation(scan_id=scan_id, created_at=now, path_hash=path_hash(r.path), **{f: getattr(r, f) for f in _FIELDS})
        for r in rows
    )
    session.flush()


def explanations_for(session: Session, scan_id: int, paths: Sequence[str] | None = None) -> list[ExplanationRow]:
    """The explanations of ``scan_id`` (only of ``paths`` when given), by path, face and frame."""
    columns = [getattr(Explanation, f) for f in _FIELDS]
    query = select(*columns).where(Explanation.scan_id == scan_id)
    out: list[ExplanationRow] = []
    if paths is None:
        parts: list[Sequence[str] | None] = [None]
    else:
        unique = sorted(set(paths))
        parts = [unique[i : i + _IN_LIST_SIZE] for i in range(0, len(unique), _IN_LIST_SIZE)]
    for part in parts:
        q = query if part is None else query.where(Explanation.path_hash.in_([path_hash(p) for p in part]))
        out += [ExplanationRow(**dict(zip(_FIELDS, row))) for row in session.execute(q)]
    out.sort(key=lambda r: (r.path, r.face_index if r.face_index is not None else -1,
                            r.frame_index if r.frame_index is not None else -1))
    return out
