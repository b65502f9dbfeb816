"""A finished scan's rows per folder, counted once when the scan ends (migration 0020).

``scan_folders`` has one row per scan and folder (a path up to and including its last ``/``: ``s3://b/a/``
for ``s3://b/a/x.jpg``): how many files, how many scored (``status = 'ok'``), how many labelled fake.  The
SQL guide's query 3 (fake rate by folder) reads it, a row per folder, where grouping ``results`` by an
expression of the path reads and cuts every path of the scan: 2.1 to 2.6 s for a scan of a million files on
the development machine (docs/benchmarks.md).

The key is ``(scan_id, position)``, the folder's place in the scan's folders sorted by name, not the folder
itself: a folder can be as long as a path, and a path has no length limit here (``results`` is keyed by its
hash for the same reason, migration 0016), while a btree entry has one on PostgreSQL.

Written by :func:`dfscan.db.scans.finish_scan` in the transaction that fills the scan's counters: one
aggregate over the scan's rows (on PostgreSQL, its partition), replaced if the scan is finished again,
deleted with the scan.  Nothing is added to the write path of ``results``.
"""

from __future__ import annotations

from sqlalchemy import ForeignKey, Integer, Text, case, delete, func, insert, over, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from ._dialects import dialect_name
from .models import Base, Result

__all__ = ["ScanFolder", "record_folders"]


class ScanFolder(Base):
    """Files of a finished scan in one folder: all of them, the scored ones, and those labelled fake."""

    __tablename__ = "scan_folders"

    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    folder: Mapped[str] = mapped_column(Text)
    files: Mapped[int] = mapped_column(Integer)
    scored: Mapped[int] = mapped_column(Integer)
    fakes: Mapped[int] = mapped_column(Integer)


def _folder(path, dialect: str):  # noqa: ANN001, ANN202 - a SQL expression in and out
    """The SQL of a path's folder: up to and including its last ``/`` ('' for a path without one).

    SQLite has no ``REVERSE``: its ``RTRIM`` of every character but ``/`` does it (the migration's portable
    form).  On PostgreSQL the position of the last ``/`` in the reversed path costs half as much as that
    ``RTRIM`` (1.2 s against 2.3 for a million paths).
    """
    if dialect != "postgresql":
        return func.rtrim(path, func.replace(path, "/", ""))
    last = func.strpos(func.reverse(path), "/")
    return case((last == 0, ""), else_=func.left(path, func.length(path) - last + 1))


def record_folders(session: Session, scan_id: int) -> None:
    """Count the scan's rows per folder into ``scan_folders`` (replacing what was there)."""
    table = ScanFolder.__table__
    session.execute(delete(table).where(table.c.scan_id == scan_id))
    folder = _folder(Result.path, dialect_name(session))
    per_folder = (
        select(
            Result.scan_id.label("scan_id"),
            folder.label("folder"),
            func.count().label("files"),
            func.count(case((Result.status == "ok", 1))).label("scored"),
            func.count(case(((Result.status == "ok") & (Result.label == "fake"), 1))).label("fakes"),
        )
        .where(Result.scan_id == scan_id)
        .group_by(Result.scan_id, folder)
        .subquery()
    )
    numbered = select(
        per_folder.c.scan_id,
        over(func.row_number(), order_by=per_folder.c.folder),
        per_folder.c.folder,
        per_folder.c.files,
        per_folder.c.scored,
        per_folder.c.fakes,
    )
    session.execute(insert(table).from_select(["scan_id", "position", "folder", "files", "scored", "fakes"],
                                              numbered))
