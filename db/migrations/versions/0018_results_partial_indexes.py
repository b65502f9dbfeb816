"""``results``' secondary indexes hold only the rows their queries ask for, and the model index goes (#27).

Every row a worker writes enters every index of its partition; an index entry costs PostgreSQL about as
much CPU as the row itself.  Each index now holds only the rows that its readers select:

* ``ix_results_scan_id_status``: ``WHERE status <> 'ok'``.  Its readers ask for errors (query 4, the
  summary's errors by reason, ``--status error``/``no-face``); a scan is nearly all ``ok`` rows, and a read of
  those (``--status ok``) is a read of the scan's partition whatever the index.
* ``ix_results_scan_id_p_fake``: ``WHERE label = 'fake'``.  Its readers rank the flagged files (queries 2
  and 18: ``label = 'fake' ORDER BY p_fake DESC``); the other reads by p_fake (the report's most
  suspicious files, query 15's most suspicious image, ``--min-p``, ``explain --top``) read the scan's
  partition, as the report's histogram beside them does anyway.
* ``ix_results_content_hash``: ``WHERE content_hash IS NOT NULL``.  Every reader looks up a hash
  (``content_hash = x`` or ``IN (...)``), which no NULL matches; rows without one (files never read:
  errors before reading, the fleet benchmark's no-op model) are left out.

``ix_results_model_id_path_hash`` is dropped: its one reader, ``--incremental``'s look-up of unchanged
files, now reads the model's scans (``scans.model_id``) through their primary key ``(scan_id, path_hash)``.
The other names and columns are unchanged, so the queries and the docs naming them still hold.  On PostgreSQL the indexes are
made on the partitioned ``results`` and so on every scan's partition (each is rebuilt here: the upgrade
locks ``results`` for as long as that takes).  SQLite has partial indexes too.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy (a migration never imports the code it migrates) of the partial indexes of dfscan.db.models.Result.
_PARTIAL = {
    "ix_results_scan_id_status": (["scan_id", "status"], "status <> 'ok'"),
    "ix_results_scan_id_p_fake": (["scan_id", "p_fake"], "label = 'fake'"),
    "ix_results_content_hash": (["content_hash"], "content_hash IS NOT NULL"),
}


def _remake(partial: bool) -> None:
    for name, (columns, where) in _PARTIAL.items():
        op.drop_index(name, table_name="results")
        clause = {"postgresql_where": sa.text(where), "sqlite_where": sa.text(where)} if partial else {}
        op.create_index(name, "results", columns, **clause)


_MODEL_INDEX = "ix_results_model_id_path_hash"


def upgrade() -> None:
    _remake(partial=True)
    op.drop_index(_MODEL_INDEX, table_name="results")


def downgrade() -> None:
    op.create_index(_MODEL_INDEX, "results", ["model_id", "path_hash"])
    _remake(partial=False)
