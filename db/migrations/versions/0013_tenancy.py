"""Tenancy: each scan records the API key that started it, and each key has a role.

``scans.api_key_id`` is the key that started a scan through `dfscan serve`;
NULL for scans started from the command line, the fleet producer or the
schedule (only ``admin`` keys see those).  ``api_keys.role`` is ``scanner``
(sees and cancels its own scans; every existing key) or ``admin`` (sees every
scan and the operations endpoints).

Both columns are added in place (``ALTER TABLE ... ADD COLUMN``), never by
rebuilding the table: on SQLite a rebuild of ``scans`` drops it, and with
foreign keys on that deletes the chunks and results that cascade from it.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ROLE_CHECK = "role IN ('scanner', 'admin')"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite takes a column's constraints only inline in ADD COLUMN.
        op.execute("ALTER TABLE scans ADD COLUMN api_key_id INTEGER "
                   "CONSTRAINT fk_scans_api_key_id_api_keys REFERENCES api_keys (id)")
        op.execute("ALTER TABLE api_keys ADD COLUMN role VARCHAR(16) DEFAULT 'scanner' NOT NULL "
                   f"CONSTRAINT ck_api_keys_role CHECK ({_ROLE_CHECK})")
    else:
        op.add_column("scans", sa.Column("api_key_id", sa.Integer(), nullable=True))
        op.create_foreign_key("fk_scans_api_key_id_api_keys", "scans", "api_keys", ["api_key_id"], ["id"])
        op.add_column("api_keys", sa.Column("role", sa.String(16), server_default=sa.text("'scanner'"),
                                            nullable=False))
        op.create_check_constraint("ck_api_keys_role", "api_keys", _ROLE_CHECK)
    op.create_index("ix_scans_api_key_id", "scans", ["api_key_id"])


def downgrade() -> None:
    op.drop_index("ix_scans_api_key_id", table_name="scans")
    if op.get_bind().dialect.name == "sqlite":
        # SQLite (3.35+) drops a column that no index or constraint of the table refers to by name.
        op.execute("ALTER TABLE scans DROP COLUMN api_key_id")
        op.execute("ALTER TABLE api_keys DROP COLUMN role")
    else:
        op.drop_constraint("ck_api_keys_role", "api_keys", type_="check")
        op.drop_column("api_keys", "role")
        op.drop_constraint("fk_scans_api_key_id_api_keys", "scans", type_="foreignkey")
        op.drop_column("scans", "api_key_id")
