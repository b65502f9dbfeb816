"""Object ETags: each result row of an ``s3://`` object records its ETag.

``results.etag`` (the ETag without its quotes; NULL for local files and for
rows written before this revision) lets ``--incremental`` tell an object
rewritten within the same second, with the same size, from an unchanged one
(LastModified has whole seconds only).  ``scan_results`` gains it at its end
(dropped first: SQLite's batch mode rebuilds ``results``).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SCAN_RESULTS = """
CREATE VIEW scan_results AS
SELECT r.scan_id AS scan_id,
       r.path AS path,
       r.status AS status,
       r.label AS label,
       r.p_fake AS p_fake,
       r.confidence AS confidence,
       r.error AS error,
       m.sha256 AS model_sha256,
       r.scanned_at AS scanned_at,
       r.faces AS faces,
       r.faces_found AS faces_found,
       r.kind AS kind,
       r.frames AS frames,
       r.duration_s AS duration_s,
       r.notes AS notes,
       r.content_hash AS content_hash,
       r.verdict_source AS verdict_source{extra}
FROM results AS r
JOIN models AS m ON m.id = r.model_id
"""
_NEW_COLUMNS = ",\n       r.etag AS etag"


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS scan_results")
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("etag", sa.String(128), nullable=True))
    op.execute(_SCAN_RESULTS.format(extra=_NEW_COLUMNS))


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS scan_results")
    with op.batch_alter_table("results") as batch:
        batch.drop_column("etag")
    op.execute(_SCAN_RESULTS.format(extra=""))
