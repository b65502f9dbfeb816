"""A scan's rows by where their verdict came from, counted once when the scan ends (migration 0019).

``scan_sources`` has one row per scan and ``verdict_source`` (``computed``, ``copy``, ``reused``): how many
files, and how many contents the scan met first that way.  Dedupe decides the second: a scan's first row with
a content (``content_hash``) is ``computed`` or ``reused``, every later one a ``copy`` of it, so the rows of
the first two with a content hash are the scan's distinct contents and a copy adds none.  (Two fleet workers
that meet a new content at the same moment both compute it: it counts twice, as it was scored twice.)  The
SQL guide's query 16 reads this table, a few rows per scan, where counting ``results`` would read every row
of the scans it compares.

It is written by :func:`dfscan.db.scans.finish_scan`, in the transaction that fills the scan's other
counters (``total``, ``fake``, ``errors``): one pass over the scan's rows (on PostgreSQL, its partition)
counting two columns, no sort, once per scan.  Nothing is added to the write path of ``results``: no
trigger, no index, no statement per chunk.  Written again (replaced) if a scan is finished again.
"""

from __future__ import annotations

from sqlalchemy import ForeignKey, Integer, String, case, delete, func, insert, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from .models import Base, Result

__all__ = ["ScanSource", "record_sources"]


class ScanSource(Base):
    """Files of a finished scan with one ``verdict_source``, and the contents the scan met first that way."""

    __tablename__ = "scan_sources"

    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), primary_key=True)
    verdict_source: Mapped[str] = mapped_column(String(16), primary_key=True)
    files: Mapped[int] = mapped_column(Integer)
    contents: Mapped[int] = mapped_column(Integer)


def record_sources(session: Session, scan_id: int) -> None:
    """Count the scan's rows per ``verdict_source`` into ``scan_sources`` (replacing what was there)."""
    table = ScanSource.__table__
    session.execute(delete(table).where(table.c.scan_id == scan_id))
    first_seen = case((Result.verdict_source == "copy", None), else_=Result.content_hash)
    counts = (
        select(Result.scan_id, Result.verdict_source, func.count(), func.count(first_seen))
        .where(Result.scan_id == scan_id)
        .group_by(Result.scan_id, Result.verdict_source)
    )
    session.execute(insert(table).from_select(["scan_id", "verdict_source", "files", "contents"], counts))
