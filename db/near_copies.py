"""A finished scan's near copies, found once when the scan ends (migration 0019): ``scan_near_copies``.

One row per ordered pair of the scan's images whose PDQ (quality 50 or more, as the matcher takes them)
share one of the eight 32-bit eighths of the hash and differ in at most 31 of the 256 bits, both directions:
``(scan_id, path_hash, other_hash, distance)``, keyed by the first three, so the near copies of one image are
a range of the key.  The SQL guide's queries 17 and 18 read this table and look up the paths in ``results``
by key, a few rows per pair, where finding the pairs in SQL reads every row of the scan.  How the pairs are
found (and the star rule for large groups of equal eighths): :mod:`dfscan.db._pairs`.

Written by :func:`dfscan.db.scans.finish_scan`, in the transaction that fills the scan's counters: one read
of the scan's ``(path_hash, pdq)`` (on PostgreSQL, its partition), the pairing in numpy, one write.  Nothing
is added to the write path of ``results``.  Replaced if a scan is finished again; deleted with its scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import ForeignKey, Integer, LargeBinary, delete, insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from ._dialects import dialect_name
from .models import Base

if TYPE_CHECKING:
    import numpy as np

__all__ = ["ScanNearCopy", "record_near_copies"]

MIN_QUALITY = 50  # a PDQ under this quality is kept but never matched (as the bank matcher does)
_BATCH = 50_000  # rows read at a time


class ScanNearCopy(Base):
    """An image of a finished scan and one of its near copies in the same scan, ``distance`` bits apart."""

    __tablename__ = "scan_near_copies"

    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), primary_key=True)
    path_hash: Mapped[bytes] = mapped_column(LargeBinary(16), primary_key=True)
    other_hash: Mapped[bytes] = mapped_column(LargeBinary(16), primary_key=True)
    distance: Mapped[int] = mapped_column(Integer)


def record_near_copies(session: Session, scan_id: int) -> int:
    """Find the scan's near copies and store them in ``scan_near_copies`` (replacing what was there).

    Returns the number of pairs (each counted once; twice as many rows)."""
    from ._pairs import near_pairs

    session.execute(delete(ScanNearCopy).where(ScanNearCopy.scan_id == scan_id))
    keys, hashes = _read_hashes(session, scan_id)
    i, j, dist = near_pairs(hashes, keys=keys)
    if len(i) == 0:
        return 0
    out = [(scan_id, keys[a], keys[b], d) for a, b, d in zip(i.tolist(), j.tolist(), dist.tolist())]
    out += [(scan_id, b, a, d) for _, a, b, d in out]
    if dialect_name(session) == "postgresql":
        with _driver(session).cursor() as cur:
            with cur.copy("COPY scan_near_copies (scan_id, path_hash, other_hash, distance) FROM STDIN") as copy:
                for row in out:
                    copy.write_row(row)
    else:
        session.execute(insert(ScanNearCopy), [{"scan_id": s, "path_hash": a, "other_hash": b, "distance": d}
                                               for s, a, b, d in out])
    return len(i)


def _read_hashes(session: Session, scan_id: int) -> tuple[Sequence[bytes], np.ndarray]:
    """The scan's matchable images: their ``path_hash`` and their PDQ as (n, 32) bytes."""
    if dialect_name(session) == "postgresql":
        return _read_hashes_packed(session, scan_id)
    import numpy as np

    from ._pairs import parse_pdq

    keys: list[bytes] = []
    parts: list[np.ndarray] = []
    cur = _driver(session).cursor()
    try:  # in batches, parsed as they come: memory holds 48 bytes an image, not every row's text
        cur.execute(_SELECT.format(mark="?"), (scan_id, MIN_QUALITY))
        while batch := cur.fetchmany(_BATCH):
            batch_keys, hexes = zip(*batch)
            hashes, kept = parse_pdq(list(hexes))
            keys += [bytes(batch_keys[k]) for k in kept.tolist()]
            parts.append(hashes)
    finally:
        cur.close()
    return keys, (np.concatenate(parts) if parts else np.zeros((0, 32), np.uint8))


_SELECT = ("SELECT path_hash, pdq FROM results WHERE scan_id = {mark} AND pdq_quality >= {mark} "
           "AND pdq IS NOT NULL")
# PostgreSQL: each image as 80 bytes (its 16-byte key, its 64 hex digits), concatenated by the server into 256
# values (by the key's first byte, so each stays far below a value's 1 GB limit at any scan size).
_PACKED = ("SELECT string_agg(path_hash || convert_to(pdq, 'UTF8'), ''::bytea) FROM results "
           "WHERE scan_id = %s AND pdq_quality >= %s AND pdq IS NOT NULL AND length(path_hash) = 16 "
           "AND octet_length(pdq) = 64 GROUP BY get_byte(path_hash, 0)")


def _read_hashes_packed(session: Session, scan_id: int) -> tuple[Sequence[bytes], np.ndarray]:
    """PostgreSQL: the scan's keys and hashes as a few large values, cut into 80-byte rows by numpy.

    A row at a time, through a cursor or COPY (one message a row), a million images took 2-6 s on the
    client, most of it making Python objects; this one statement about 1.3 s."""
    import numpy as np

    from ._pairs import parse_hex

    with _driver(session).cursor(binary=True) as cur:
        cur.execute(_PACKED, (scan_id, MIN_QUALITY))
        data = b"".join(bytes(value) for (value,) in cur.fetchall())
    rows = np.frombuffer(data, np.uint8).reshape(-1, 80)
    hashes, kept = parse_hex(rows[:, 16:])
    return _Keys(rows[kept, :16]), hashes


class _Keys(Sequence[bytes]):
    """Rows of a (n, 16) array as bytes, made only for the few rows asked for (the pairs, a star's members)."""

    def __init__(self, rows: np.ndarray) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i):  # type: ignore[no-untyped-def, override]
        return self._rows[i].tobytes()


def _driver(session: Session) -> Any:
    """The driver's connection (psycopg's or sqlite3's) under the session's transaction: COPY, binary results
    and batches of plain tuples, which SQLAlchemy's result objects do not offer."""
    driver = session.connection().connection.driver_connection
    assert driver is not None  # a checked-out connection always has one
    return driver
