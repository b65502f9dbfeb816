"""Content hashes: each result row records the SHA-256 of its file's bytes and where its verdict came from.

``results.content_hash`` (hex SHA-256, NULL where the bytes were never all
read) is indexed: a batch looks up rows with its hashes before inference.
``results.verdict_source`` is ``computed`` (scored from this file's bytes in
this scan), ``copy`` (the same bytes earlier in this scan) or ``reused`` (an
``ok`` row of an earlier scan with the same model, ``--reuse-verdicts``);
rows written before this revision were all computed, which the server default
says.  ``scan_results`` gains both columns at its end (it is dropped first:
SQLite's batch mode rebuilds ``results``).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
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
       r.faces_found AS faces_found{extra}
FROM results AS r
JOIN models AS m ON m.id = r.model_id
"""
# The columns 0010 (videos) put at the view's end, then this revision's.
_VIDEO_COLUMNS = (",\n       r.kind AS kind,\n       r.frames AS frames,\n       r.duration_s AS duration_s,"
                  "\n       r.notes AS notes")
_NEW_COLUMNS = ",\n       r.content_hash AS content_hash,\n       r.verdict_source AS verdict_source"


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS scan_results")
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("content_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("verdict_source", sa.String(8), nullable=False,
                                   server_default=sa.text("'computed'")))
        batch.create_check_constraint(op.f("ck_results_verdict_source"),
                                      "verdict_source IN ('computed', 'copy', 'reused')")
    op.create_index("ix_results_content_hash", "results", ["content_hash"])
    op.execute(_SCAN_RESULTS.format(extra=_VIDEO_COLUMNS + _NEW_COLUMNS))


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS scan_results")
    op.drop_index("ix_results_content_hash", table_name="results")
    with op.batch_alter_table("results") as batch:
        batch.drop_constraint(op.f("ck_results_verdict_source"), type_="check")
        batch.drop_column("verdict_source")
        batch.drop_column("content_hash")
    op.execute(_SCAN_RESULTS.format(extra=_VIDEO_COLUMNS))
