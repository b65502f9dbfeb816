"""Summaries of a finished scan: ``scan_sources`` (the SQL guide's query 16), ``scan_near_copies`` (17, 18).

One row per scan and ``verdict_source`` (``computed``, ``copy``, ``reused``): ``files``, and ``contents``:
the contents (``content_hash``) the scan met first that way (its computed and reused rows with a content hash;
a copy repeats a content met before, and adds none).  ``dfscan.db.scans.finish_scan`` writes them when a
scan ends, with its other counters, so that comparing the inference spent by scans reads a few rows per
scan instead of every row of them.  Scans that ended before this migration are counted here, from their
rows (one aggregate over ``results`` of the finished scans); a running scan gets its rows when it ends.
Deleted with their scan (``ON DELETE CASCADE``; ``dfscan prune`` empties every table with a ``scan_id``).

``scan_near_copies``: each ordered pair of a finished scan's images whose PDQ (quality 50 or more) share an
eighth of the hash and differ in at most 31 bits, with the distance (``dfscan.db.near_copies``).  Scans that
ended before this migration get theirs here, from their rows, with a frozen copy of the pairing
(``dfscan.db._pairs``: the same rule, including the star for runs of more than 256 equal eighths), one scan
at a time.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BACKFILL = """
INSERT INTO scan_sources (scan_id, verdict_source, files, contents)
SELECT r.scan_id, r.verdict_source, COUNT(*),
       COUNT(CASE WHEN r.verdict_source = 'copy' THEN NULL ELSE r.content_hash END)
FROM results AS r
WHERE r.scan_id IN (SELECT id FROM scans WHERE status <> 'running')
GROUP BY r.scan_id, r.verdict_source
"""


# Frozen copy of dfscan.db._pairs / dfscan.db.near_copies (a migration never imports the code it migrates).
_RADIUS, _STAR, _MIN_QUALITY = 31, 256, 50


def _pairs(keys: list[bytes], hashes: np.ndarray) -> list[tuple[bytes, bytes, int]]:
    """Both directions of each pair sharing an eighth, within the radius; a run over _STAR is a star."""
    n, found = len(keys), set()
    eighths = hashes.view(">u4").reshape(n, 8)
    for k in range(8):
        order = np.argsort(eighths[:, k], kind="stable")
        values = eighths[order, k]
        edges = np.concatenate(([0], np.flatnonzero(values[1:] != values[:-1]) + 1, [n]))
        shared = np.flatnonzero(np.diff(edges) > 1)  # runs of two or more: the only ones that pair
        for start, end in zip(edges[shared].tolist(), edges[shared + 1].tolist()):
            members = order[start:end].tolist()
            if len(members) > _STAR:
                centre = min(members, key=lambda m: keys[m])
                found.update((min(centre, m), max(centre, m)) for m in members if m != centre)
            else:
                found.update(combinations(sorted(members), 2))
    out = []
    for a, b in sorted(found):
        d = int(np.unpackbits(hashes[a] ^ hashes[b]).sum())
        if d <= _RADIUS:
            out += [(keys[a], keys[b], d), (keys[b], keys[a], d)]
    return out


def _fill_near_copies() -> None:
    conn = op.get_bind()
    ended = conn.execute(sa.text("SELECT id FROM scans WHERE status <> 'running' ORDER BY id")).scalars().all()
    insert = sa.text("INSERT INTO scan_near_copies (scan_id, path_hash, other_hash, distance) "
                     "VALUES (:s, :a, :b, :d)")
    for scan_id in ended:
        keys, hashes = [], []
        select = sa.text("SELECT path_hash, pdq FROM results WHERE scan_id = :s AND pdq_quality >= :q "
                         "AND pdq IS NOT NULL").execution_options(yield_per=50_000)  # streamed, not all at once
        rows = conn.execute(select, {"s": scan_id, "q": _MIN_QUALITY})
        for key, pdq in rows:
            try:
                raw = bytes.fromhex(pdq)
            except ValueError:
                continue
            if len(pdq) == 64 and len(raw) == 32:
                keys.append(bytes(key))
                hashes.append(raw)
        if len(keys) > 1:
            pairs = _pairs(keys, np.frombuffer(b"".join(hashes), np.uint8).reshape(len(keys), 32))
            if pairs:
                conn.execute(insert, [{"s": scan_id, "a": a, "b": b, "d": d} for a, b, d in pairs])


def upgrade() -> None:
    op.create_table(
        "scan_sources",
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("verdict_source", sa.String(length=16), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("contents", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["scan_id"], ["scans.id"], name=op.f("fk_scan_sources_scan_id_scans"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("scan_id", "verdict_source", name=op.f("pk_scan_sources")),
    )
    op.execute(_BACKFILL)
    op.create_table(
        "scan_near_copies",
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("path_hash", sa.LargeBinary(length=16), nullable=False),
        sa.Column("other_hash", sa.LargeBinary(length=16), nullable=False),
        sa.Column("distance", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["scan_id"], ["scans.id"], name=op.f("fk_scan_near_copies_scan_id_scans"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("scan_id", "path_hash", "other_hash", name=op.f("pk_scan_near_copies")),
    )
    _fill_near_copies()


def downgrade() -> None:
    op.drop_table("scan_near_copies")
    op.drop_table("scan_sources")
