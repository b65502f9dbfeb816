"""Chunk leases, and no ``ok`` row without a probability.

* ``chunks`` gains a lease: who scores it (``lease_owner``, "host:pid") and
  until when (``lease_until``), renewed by the worker while it scores; and
  what the reaper did when a lease ran out (``lease_expired_at``,
  ``requeued_at``, ``requeues``).  A worker host lost mid-chunk then costs
  one lease time, not the broker's visibility timeout.
* ``results`` refuses an ``ok`` row whose ``p_fake`` is missing or outside
  [0, 1] (a NaN from a broken model fails it on both backends).  Existing
  rows that break the rule (stored before it) become ``error`` rows with
  reason ``bad-probability`` first, so that the constraint can be added.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OK_HAS_P_FAKE = "status <> 'ok' OR (p_fake IS NOT NULL AND p_fake >= 0 AND p_fake <= 1)"
_DATETIME = sa.DateTime(timezone=True)


@contextmanager
def _views_set_aside() -> Iterator[None]:
    """SQLite's batch mode rebuilds ``results`` and renames it, which a view on it forbids: drop and re-create them."""
    conn = op.get_bind()
    if conn.dialect.name != "sqlite":
        yield
        return
    views = conn.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'view'")).all()
    for name, _ in views:
        op.execute(f'DROP VIEW "{name}"')
    yield
    for _, sql in views:
        op.execute(sql)


def upgrade() -> None:
    with op.batch_alter_table("chunks") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(255), nullable=True))
        batch.add_column(sa.Column("lease_until", _DATETIME, nullable=True))
        batch.add_column(sa.Column("lease_expired_at", _DATETIME, nullable=True))
        batch.add_column(sa.Column("requeued_at", _DATETIME, nullable=True))
        batch.add_column(sa.Column("requeues", sa.Integer(), server_default=sa.text("0"), nullable=False))
    op.create_index(op.f("ix_chunks_status_lease_until"), "chunks", ["status", "lease_until"])
    op.execute(
        "UPDATE results SET status = 'error', label = NULL, confidence = NULL, error_code = 'bad-probability', "
        "error = 'the model gave no valid probability (stored before migration 0004)' "
        f"WHERE NOT ({OK_HAS_P_FAKE})"
    )
    with _views_set_aside():
        with op.batch_alter_table("results") as batch:
            batch.create_check_constraint(op.f("ck_results_ok_p_fake"), OK_HAS_P_FAKE)


def downgrade() -> None:
    with _views_set_aside():
        with op.batch_alter_table("results") as batch:
            batch.drop_constraint(op.f("ck_results_ok_p_fake"), type_="check")
    op.drop_index(op.f("ix_chunks_status_lease_until"), table_name="chunks")
    with op.batch_alter_table("chunks") as batch:
        batch.drop_column("requeues")
        batch.drop_column("requeued_at")
        batch.drop_column("lease_expired_at")
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
