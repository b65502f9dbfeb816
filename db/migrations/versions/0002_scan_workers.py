"""scan_workers: which processes scored a scan, with which runtime and decoder.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONDoc = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "scan_workers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("runtime", sa.String(64), nullable=False),
        sa.Column("runtime_version", sa.String(64), nullable=True),
        sa.Column("precision", sa.String(16), nullable=True),
        sa.Column("device", sa.String(64), nullable=True),
        sa.Column("decoder", sa.String(64), nullable=False),
        sa.Column("decoder_version", sa.String(64), nullable=True),
        sa.Column("info", JSONDoc, nullable=False),
        sa.Column("started_at", Timestamp, server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False),
        sa.ForeignKeyConstraint(["scan_id"], ["scans.id"], name="fk_scan_workers_scan_id_scans", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_scan_workers"),
        sa.UniqueConstraint("scan_id", "host", "pid", name="uq_scan_workers_scan_id_host_pid"),
    )


def downgrade() -> None:
    op.drop_table("scan_workers")
