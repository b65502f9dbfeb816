"""Faces: a third result status, face counts on results, one row per scored face, the scan_faces view.

``results.status`` gains ``no-face`` (faces on, the image has none worth
scoring); ``results.faces`` / ``faces_found`` say how many faces were scored
and found (NULL when faces are off); ``result_faces`` holds each scored face
(box in original pixels, detector score, verdict); the ``scan_faces`` view is
the analysts' face-level contract.  ``scan_results`` gains the two counts at
its end (it is dropped first: SQLite's batch mode rebuilds ``results``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
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
       r.scanned_at AS scanned_at{extra}
FROM results AS r
JOIN models AS m ON m.id = r.model_id
"""
CREATE_SCAN_FACES = """
CREATE VIEW scan_faces AS
SELECT f.scan_id AS scan_id,
       f.path AS path,
       f.face_index AS face_index,
       f.x AS x,
       f.y AS y,
       f.w AS w,
       f.h AS h,
       f.detector_score AS detector_score,
       f.p_fake AS p_fake,
       f.label AS label
FROM result_faces AS f
"""


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS scan_results")
    with op.batch_alter_table("results") as batch:
        batch.drop_constraint(op.f("ck_results_status"), type_="check")
        batch.create_check_constraint(op.f("ck_results_status"), "status IN ('ok', 'error', 'no-face')")
        batch.add_column(sa.Column("faces", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("faces_found", sa.Integer(), nullable=True))
    op.create_table(
        "result_faces",
        sa.Column("id", BigIntPK, nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("face_index", sa.Integer(), nullable=False),
        sa.Column("x", sa.Integer(), nullable=False),
        sa.Column("y", sa.Integer(), nullable=False),
        sa.Column("w", sa.Integer(), nullable=False),
        sa.Column("h", sa.Integer(), nullable=False),
        sa.Column("detector_score", sa.Double(), nullable=False),
        sa.Column("p_fake", sa.Double(), nullable=False),
        sa.Column("label", sa.String(8), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_result_faces")),
        sa.UniqueConstraint("scan_id", "path", "face_index", name=op.f("uq_result_faces_scan_id_path_face_index")),
        sa.CheckConstraint("label IN ('real', 'fake')", name=op.f("ck_result_faces_label")),
        sa.ForeignKeyConstraint(["scan_id"], ["scans.id"], name=op.f("fk_result_faces_scan_id_scans"),
                                ondelete="CASCADE"),
    )
    op.execute(_SCAN_RESULTS.format(extra=",\n       r.faces AS faces,\n       r.faces_found AS faces_found"))
    op.execute(CREATE_SCAN_FACES)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS scan_faces")
    op.execute("DROP VIEW IF EXISTS scan_results")
    op.drop_table("result_faces")
    op.execute("DELETE FROM results WHERE status = 'no-face'")
    with op.batch_alter_table("results") as batch:
        batch.drop_column("faces_found")
        batch.drop_column("faces")
        batch.drop_constraint(op.f("ck_results_status"), type_="check")
        batch.create_check_constraint(op.f("ck_results_status"), "status IN ('ok', 'error')")
    op.execute(_SCAN_RESULTS.format(extra=""))
