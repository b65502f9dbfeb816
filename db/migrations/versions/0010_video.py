"""Videos: results.kind / frames / duration_s / notes, one row per sampled frame and track, the scan_frames view.

A video is one row of ``results`` (``kind = 'video'``; images keep
``'image'``) with the frames scored, its length and what was odd about the
file (``notes``: two video streams, frames that did not decode, the weaker
per-frame verdict of a model without a sequence graph).  ``result_frames``
holds each sampled frame of each track (a face followed through the frames,
or track 0: the whole frame) with its time, face box and p_fake;
``scan_frames`` is its analysts' view.  ``scan_results`` gains the four
columns at its end (dropped first: SQLite's batch mode rebuilds ``results``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

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
_VIDEO_COLUMNS = (",\n       r.kind AS kind,\n       r.frames AS frames,\n       r.duration_s AS duration_s,"
                  "\n       r.notes AS notes")
CREATE_SCAN_FRAMES = """
CREATE VIEW scan_frames AS
SELECT f.scan_id AS scan_id,
       f.path AS path,
       f.track AS track,
       f.frame_index AS frame_index,
       f.timestamp_s AS timestamp_s,
       f.x AS x,
       f.y AS y,
       f.w AS w,
       f.h AS h,
       f.p_fake AS p_fake,
       f.track_p_fake AS track_p_fake
FROM result_frames AS f
"""


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS scan_results")
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("kind", sa.String(8), nullable=False, server_default=sa.text("'image'")))
        batch.add_column(sa.Column("frames", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("duration_s", sa.Double(), nullable=True))
        batch.add_column(sa.Column("notes", sa.Text(), nullable=True))
        batch.create_check_constraint(op.f("ck_results_kind"), "kind IN ('image', 'video')")
    op.create_table(
        "result_frames",
        sa.Column("id", BigIntPK, nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("track", sa.Integer(), nullable=False),
        sa.Column("frame_index", sa.Integer(), nullable=False),
        sa.Column("timestamp_s", sa.Double(), nullable=False),
        sa.Column("x", sa.Integer(), nullable=True),
        sa.Column("y", sa.Integer(), nullable=True),
        sa.Column("w", sa.Integer(), nullable=True),
        sa.Column("h", sa.Integer(), nullable=True),
        sa.Column("p_fake", sa.Double(), nullable=True),
        sa.Column("track_p_fake", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_result_frames")),
        sa.UniqueConstraint("scan_id", "path", "track", "frame_index",
                            name=op.f("uq_result_frames_scan_id_path_track_frame_index")),
        sa.ForeignKeyConstraint(["scan_id"], ["scans.id"], name=op.f("fk_result_frames_scan_id_scans"),
                                ondelete="CASCADE"),
    )
    op.execute(_SCAN_RESULTS.format(extra=_VIDEO_COLUMNS))
    op.execute(CREATE_SCAN_FRAMES)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS scan_frames")
    op.execute("DROP VIEW IF EXISTS scan_results")
    op.drop_table("result_frames")
    op.execute("DELETE FROM results WHERE kind = 'video'")
    with op.batch_alter_table("results") as batch:
        batch.drop_constraint(op.f("ck_results_kind"), type_="check")
        batch.drop_column("notes")
        batch.drop_column("duration_s")
        batch.drop_column("frames")
        batch.drop_column("kind")
    op.execute(_SCAN_RESULTS.format(extra=""))
