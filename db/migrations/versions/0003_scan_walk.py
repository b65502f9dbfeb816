"""The walk's state in columns of scans, out of the audit record.

``scans.settings`` is the audit record of a scan, written once; the walk's
state (done, how many chunks, how many files an incremental scan skipped)
changes while the scan runs and was kept under ``settings["producer"]``.
It moves to three columns; existing scans keep their values.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONDoc = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("scans") as batch:
        batch.add_column(sa.Column("walk_done", sa.Boolean(), server_default=sa.text("false"), nullable=False))
        batch.add_column(sa.Column("n_chunks", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("skipped", sa.Integer(), server_default=sa.text("0"), nullable=False))
    scans = sa.table("scans", sa.column("id", sa.Integer()), sa.column("status", sa.String()),
                     sa.column("settings", JSONDoc), sa.column("walk_done", sa.Boolean()),
                     sa.column("n_chunks", sa.Integer()), sa.column("skipped", sa.Integer()))
    conn = op.get_bind()
    for scan_id, status, settings in conn.execute(sa.select(scans.c.id, scans.c.status, scans.c.settings)).all():
        settings = dict(settings or {})
        state = settings.pop("producer", None) or {}
        conn.execute(
            sa.update(scans)
            .where(scans.c.id == scan_id)
            .values(
                # A scan that ended has nothing left to walk.
                walk_done=bool(state.get("walk_done")) or status != "running",
                n_chunks=state.get("n_chunks"),
                skipped=int(state.get("skipped", 0)),
                settings=settings,
            )
        )


def downgrade() -> None:
    scans = sa.table("scans", sa.column("id", sa.Integer()), sa.column("settings", JSONDoc),
                     sa.column("walk_done", sa.Boolean()), sa.column("n_chunks", sa.Integer()),
                     sa.column("skipped", sa.Integer()))
    conn = op.get_bind()
    rows = conn.execute(sa.select(scans.c.id, scans.c.settings, scans.c.walk_done, scans.c.n_chunks,
                                  scans.c.skipped)).all()
    for scan_id, settings, walk_done, n_chunks, skipped in rows:
        state = {"walk_done": bool(walk_done), "skipped": skipped}
        if n_chunks is not None:
            state["n_chunks"] = n_chunks
        conn.execute(sa.update(scans).where(scans.c.id == scan_id)
                     .values(settings={**dict(settings or {}), "producer": state}))
    with op.batch_alter_table("scans") as batch:
        batch.drop_column("skipped")
        batch.drop_column("n_chunks")
        batch.drop_column("walk_done")
