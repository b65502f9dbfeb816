"""Initial schema: models, scans, chunks, results and the scan_results view.

Revision ID: 0001
Revises:
Create Date: 2025-11-25

Written by hand and self-contained (no imports from db.models), so that it keeps
describing this revision when the models move on. Constraint names follow the
naming convention in db/models.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONDoc = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)
NOW = sa.text("CURRENT_TIMESTAMP")
ZERO = sa.text("0")

# Portable SQL (SQLite and PostgreSQL). The column list is an analyst-facing
# contract: scan_id, path, status, label, p_fake, confidence, error,
# model_sha256, scanned_at, in that order.
CREATE_SCAN_RESULTS = """
CREATE VIEW scan_results AS
SELECT r.scan_id AS scan_id,
       r.path AS path,
       r.status AS status,
       r.label AS label,
       r.p_fake AS p_fake,
       r.confidence AS confidence,
       r.error AS error,
       m.sha256 AS model_sha256,
       r.scanned_at AS scanned_at
FROM results AS r
JOIN models AS m ON m.id = r.model_id
"""


def _counts() -> list[sa.Column]:
    return [
        sa.Column(name, sa.Integer(), nullable=False, server_default=ZERO)
        for name in ("ok", "real", "fake", "errors")
    ]


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("info", JSONDoc, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("sha256", name=op.f("uq_models_sha256")),
    )
    op.create_table(
        "scans",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("roots", JSONDoc, nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("settings", JSONDoc, nullable=False),
        sa.Column("total", sa.Integer(), nullable=False, server_default=ZERO),
        *_counts(),
        sa.Column("started_at", Timestamp, nullable=False, server_default=NOW),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scans")),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_scans_model_id_models")
        ),
    )
    op.create_table(
        "chunks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("paths", JSONDoc, nullable=False),
        sa.Column("n_paths", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=ZERO),
        *_counts(),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False, server_default=NOW),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chunks")),
        sa.UniqueConstraint("scan_id", "seq", name=op.f("uq_chunks_scan_id_seq")),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scans.id"], name=op.f("fk_chunks_scan_id_scans"), ondelete="CASCADE"
        ),
    )
    op.create_index(op.f("ix_chunks_scan_id_status"), "chunks", ["scan_id", "status"])
    op.create_table(
        "results",
        sa.Column("id", BigIntPK, nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("mtime", sa.Double(), nullable=True),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("label", sa.String(8), nullable=True),
        sa.Column("p_fake", sa.Double(), nullable=True),
        sa.Column("confidence", sa.Double(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("scanned_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_results")),
        sa.UniqueConstraint("scan_id", "path", name=op.f("uq_results_scan_id_path")),
        sa.CheckConstraint("status IN ('ok', 'error')", name=op.f("ck_results_status")),
        sa.CheckConstraint(
            "label IS NULL OR label IN ('real', 'fake')", name=op.f("ck_results_label")
        ),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scans.id"], name=op.f("fk_results_scan_id_scans"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_results_model_id_models")
        ),
    )
    op.create_index(op.f("ix_results_scan_id_status"), "results", ["scan_id", "status"])
    op.create_index(op.f("ix_results_scan_id_p_fake"), "results", ["scan_id", "p_fake"])
    op.create_index(op.f("ix_results_path"), "results", ["path"])
    op.create_index(op.f("ix_results_model_id_path"), "results", ["model_id", "path"])
    op.execute(CREATE_SCAN_RESULTS)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS scan_results")
    op.drop_table("results")
    op.drop_table("chunks")
    op.drop_table("scans")
    op.drop_table("models")
