"""Review: analysts' decisions on a scan's items (#26).

``reviews`` keeps every decision ever made on a file of a scan (a changed decision is a new row), keyed by
``(scan_id, path_hash)`` (``dfscan.db.paths.path_hash``) like every table keyed by a scan's file; the view
``scan_reviews`` shows analysts exactly ``scan_id, path, decision, reviewer, note, decided_at``: the
current (latest) decision per file.  ``copy_of`` names the path the analyst decided when a row was written
for a copy of it (same content hash) decided together; NULL on the file decided directly.

``api_keys.role`` gains ``reviewer`` (decides on the scans of its team), and ``api_keys.team`` says which
team a key belongs to: a reviewer sees the scans started by keys of its own team (NULL: no team, none).
SQLite keeps a CHECK only in the table's SQL text, and rebuilding ``api_keys`` is refused while scans
refer to it (foreign keys on): the constraint's text is changed in place, the procedure SQLite documents
for changes that leave stored rows valid (https://sqlite.org/lang_altertable.html#otheralter).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_OLD_ROLE_CHECK = "role IN ('scanner', 'admin')"
_NEW_ROLE_CHECK = "role IN ('scanner', 'reviewer', 'admin')"
_DECISION_CHECK = "decision IN ('fake', 'real', 'unsure', 'escalate')"
_SCAN_REVIEWS = """
CREATE VIEW scan_reviews AS
SELECT r.scan_id AS scan_id,
       r.path AS path,
       r.decision AS decision,
       r.reviewer AS reviewer,
       r.note AS note,
       r.decided_at AS decided_at
FROM reviews AS r
WHERE r.id = (SELECT max(l.id) FROM reviews AS l WHERE l.scan_id = r.scan_id AND l.path_hash = r.path_hash)
"""


def _set_role_check(old: str, new: str) -> None:
    if op.get_bind().dialect.name == "sqlite":
        bind = op.get_bind()
        version = bind.exec_driver_sql("PRAGMA schema_version").scalar()
        bind.exec_driver_sql("PRAGMA writable_schema = ON")
        changed = bind.exec_driver_sql("UPDATE sqlite_master SET sql = replace(sql, ?, ?) "
                                       "WHERE type = 'table' AND name = 'api_keys' AND instr(sql, ?) > 0",
                                       (old, new, old)).rowcount
        bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
        bind.exec_driver_sql("PRAGMA writable_schema = OFF")
        if changed != 1:  # not the constraint 0013 wrote: stop rather than leave the old one in force
            raise RuntimeError(f"api_keys has no CHECK ({old}) to change")
    else:
        op.drop_constraint("ck_api_keys_role", "api_keys", type_="check")
        op.create_check_constraint("ck_api_keys_role", "api_keys", new)


def upgrade() -> None:
    _set_role_check(_OLD_ROLE_CHECK, _NEW_ROLE_CHECK)
    op.add_column("api_keys", sa.Column("team", sa.String(64), nullable=True))
    op.create_table(
        "reviews",
        sa.Column("id", BigIntPK, nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("path_hash", sa.LargeBinary(16), nullable=False),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("reviewer", sa.String(255), nullable=False),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), server_default=sa.text("CURRENT_TIMESTAMP"),
                  nullable=False),
        sa.Column("copy_of", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reviews")),
        sa.CheckConstraint(_DECISION_CHECK, name=op.f("ck_reviews_decision")),
        sa.ForeignKeyConstraint(["scan_id"], ["scans.id"], name=op.f("fk_reviews_scan_id_scans"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], name=op.f("fk_reviews_api_key_id_api_keys"),
                                ondelete="SET NULL"),
    )
    op.create_index("ix_reviews_scan_id_path_hash_id", "reviews", ["scan_id", "path_hash", "id"])
    op.execute(_SCAN_REVIEWS)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS scan_reviews")
    op.drop_index("ix_reviews_scan_id_path_hash_id", table_name="reviews")
    op.drop_table("reviews")
    # A reviewer key must not become a scanner key (which starts scans): it is revoked.
    op.execute("UPDATE api_keys SET revoked_at = coalesce(revoked_at, CURRENT_TIMESTAMP), role = 'scanner' "
               "WHERE role = 'reviewer'")
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE api_keys DROP COLUMN team")
    else:
        op.drop_column("api_keys", "team")
    _set_role_check(_NEW_ROLE_CHECK, _OLD_ROLE_CHECK)
