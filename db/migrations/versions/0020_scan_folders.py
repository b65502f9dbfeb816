"""A finished scan's rows per folder: ``scan_folders`` (the SQL guide's query 3, fake rate by folder).

One row per scan and folder (a path up to its last ``/``): ``files``, ``scored`` (``status = 'ok'``) and
``fakes`` (scored and labelled fake), keyed by ``(scan_id, position)``, the folder's place among the scan's
folders in name order (a folder has no length limit, so it is not itself a key: a btree entry has one on
PostgreSQL).  ``dfscan.db.scans.finish_scan`` writes them when a scan ends, so that the fake rate by
folder reads a row per folder instead of every path of the scan.  Scans that ended before this migration
are counted here, from their rows, in one aggregate; a running scan gets its rows when it ends.  Deleted with
their scan (``ON DELETE CASCADE``; ``dfscan prune`` empties every table with a ``scan_id``).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of dfscan.db.folders.record_folders, for every scan that has ended.
_BACKFILL = """
INSERT INTO scan_folders (scan_id, position, folder, files, scored, fakes)
SELECT scan_id, ROW_NUMBER() OVER (PARTITION BY scan_id ORDER BY folder), folder, files, scored, fakes
FROM (
    SELECT r.scan_id, RTRIM(r.path, REPLACE(r.path, '/', '')) AS folder, COUNT(*) AS files,
           COUNT(CASE WHEN r.status = 'ok' THEN 1 END) AS scored,
           COUNT(CASE WHEN r.status = 'ok' AND r.label = 'fake' THEN 1 END) AS fakes
    FROM results AS r
    WHERE r.scan_id IN (SELECT id FROM scans WHERE status <> 'running')
    GROUP BY r.scan_id, RTRIM(r.path, REPLACE(r.path, '/', ''))
) AS per_folder
"""


def upgrade() -> None:
    op.create_table(
        "scan_folders",
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("folder", sa.Text(), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("scored", sa.Integer(), nullable=False),
        sa.Column("fakes", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["scan_id"], ["scans.id"], name=op.f("fk_scan_folders_scan_id_scans"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("scan_id", "position", name=op.f("pk_scan_folders")),
    )
    op.execute(_BACKFILL)


def downgrade() -> None:
    op.drop_table("scan_folders")
