"""Explanations: class-activation heatmaps of a scan's images, with their peak and a small overlay.

Revision ID: 0009
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MAX_OVERLAY_BYTES = 64 * 1024


def upgrade() -> None:
    op.create_table(
        "explanations",
        sa.Column("id", BigIntPK, nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("face_index", sa.Integer(), nullable=True),
        sa.Column("frame_index", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("p_fake", sa.Double(), nullable=True),
        sa.Column("peak_x", sa.Integer(), nullable=True),
        sa.Column("peak_y", sa.Integer(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("target_layer", sa.String(length=128), nullable=False),
        sa.Column("checkpoint_sha256", sa.String(length=64), nullable=False),
        sa.Column("overlay", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('ok', 'unexplainable')", name=op.f("ck_explanations_status")),
        sa.CheckConstraint(f"overlay IS NULL OR length(overlay) <= {MAX_OVERLAY_BYTES}",
                           name=op.f("ck_explanations_overlay_size")),
        sa.ForeignKeyConstraint(["scan_id"], ["scans.id"], name=op.f("fk_explanations_scan_id_scans"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_explanations")),
    )
    op.create_index("ix_explanations_scan_id_path", "explanations", ["scan_id", "path"])


def downgrade() -> None:
    op.drop_index("ix_explanations_scan_id_path", table_name="explanations")
    op.drop_table("explanations")
