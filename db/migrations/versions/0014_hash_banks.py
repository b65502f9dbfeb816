"""Hash banks: each file's PDQ, banks of known hashes, and the matches a scan found.

``results`` gains ``pdq`` (64 hex digits, most significant bit first, as
ThreatExchange and HMA write it), ``pdq_quality`` and ``matches`` (how many
bank entries the file matched; NULL where it was not matched); ``result_frames``
gains each frame's ``pdq``.  ``hash_banks`` and ``bank_hashes`` hold the banks,
``result_matches`` the matches, and the view ``scan_matches`` shows them to
analysts; ``match_notices`` the POSTs due for matched files (a scan's
callback, a bank's webhook).  ``scan_results`` and ``scan_frames`` gain the new columns at their
end (dropped first and made again).  Columns are added in place
(``ALTER TABLE ... ADD COLUMN``), never by rebuilding ``results``.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# As the models declare them (dfscan.db._types), fixed here: a migration is the schema as of its revision.
BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)

revision: str = "0014"
down_revision: str | None = "0013"
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
       r.faces_found AS faces_found,
       r.kind AS kind,
       r.frames AS frames,
       r.duration_s AS duration_s,
       r.notes AS notes,
       r.content_hash AS content_hash,
       r.verdict_source AS verdict_source,
       r.etag AS etag{extra}
FROM results AS r
JOIN models AS m ON m.id = r.model_id
"""
_RESULT_COLUMNS = ",\n       r.pdq AS pdq,\n       r.pdq_quality AS pdq_quality,\n       r.matches AS matches"
_SCAN_FRAMES = """
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
       f.track_p_fake AS track_p_fake{extra}
FROM result_frames AS f
"""
_SCAN_MATCHES = """
CREATE VIEW scan_matches AS
SELECT m.scan_id AS scan_id,
       m.path AS path,
       m.bank AS bank,
       m.ref AS ref,
       m.label AS label,
       m.distance AS distance,
       m.frame AS frame
FROM result_matches AS m
"""


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS scan_results")
    op.execute("DROP VIEW IF EXISTS scan_frames")
    op.add_column("results", sa.Column("pdq", sa.String(64), nullable=True))
    op.add_column("results", sa.Column("pdq_quality", sa.Integer(), nullable=True))
    op.add_column("results", sa.Column("matches", sa.Integer(), nullable=True))
    op.add_column("result_frames", sa.Column("pdq", sa.String(64), nullable=True))
    op.create_table(
        "hash_banks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False, server_default=sa.text("'pdq'")),
        sa.Column("distance", sa.Integer(), nullable=False, server_default=sa.text("31")),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.text("true")),
        sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("size", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("webhook_secret", sa.String(128), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False, server_default=sa.text("CURRENT_TIMESTAMP")),
        sa.Column("updated_at", Timestamp, nullable=False, server_default=sa.text("CURRENT_TIMESTAMP")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hash_banks")),
        sa.UniqueConstraint("name", name=op.f("uq_hash_banks_name")),
        sa.CheckConstraint("kind IN ('pdq', 'md5', 'sha256')", name=op.f("ck_hash_banks_kind")),
    )
    op.create_table(
        "bank_hashes",
        sa.Column("id", BigIntPK, nullable=False),
        sa.Column("bank_id", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("ref", sa.Text(), nullable=True),
        sa.Column("label", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bank_hashes")),
        sa.ForeignKeyConstraint(["bank_id"], ["hash_banks.id"], name=op.f("fk_bank_hashes_bank_id_hash_banks"),
                                ondelete="CASCADE"),
    )
    op.create_index("ix_bank_hashes_bank_id_hash", "bank_hashes", ["bank_id", "hash"])
    op.create_table(
        "result_matches",
        sa.Column("id", BigIntPK, nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("bank_id", sa.Integer(), nullable=True),
        sa.Column("bank", sa.String(255), nullable=False),
        sa.Column("ref", sa.Text(), nullable=True),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("distance", sa.Integer(), nullable=False),
        sa.Column("frame", sa.Integer(), nullable=True),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_result_matches")),
        sa.ForeignKeyConstraint(["scan_id"], ["scans.id"], name=op.f("fk_result_matches_scan_id_scans"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["bank_id"], ["hash_banks.id"], name=op.f("fk_result_matches_bank_id_hash_banks"),
                                ondelete="SET NULL"),
    )
    op.create_index("ix_result_matches_scan_id_path", "result_matches", ["scan_id", "path"])
    op.create_table(
        "match_notices",
        sa.Column("id", BigIntPK, nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("target", sa.String(32), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("next_attempt_at", Timestamp, nullable=True),
        sa.Column("delivered_at", Timestamp, nullable=True),
        sa.Column("given_up_at", Timestamp, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False, server_default=sa.text("CURRENT_TIMESTAMP")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_match_notices")),
        sa.UniqueConstraint("scan_id", "path", "target", name=op.f("uq_match_notices_scan_id_path_target")),
        sa.ForeignKeyConstraint(["scan_id"], ["scans.id"], name=op.f("fk_match_notices_scan_id_scans"),
                                ondelete="CASCADE"),
    )
    op.create_index("ix_match_notices_delivered_at_given_up_at", "match_notices", ["delivered_at", "given_up_at"])
    op.execute(_SCAN_RESULTS.format(extra=_RESULT_COLUMNS))
    op.execute(_SCAN_FRAMES.format(extra=",\n       f.pdq AS pdq"))
    op.execute(_SCAN_MATCHES)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS scan_matches")
    op.execute("DROP VIEW IF EXISTS scan_frames")
    op.execute("DROP VIEW IF EXISTS scan_results")
    op.drop_table("match_notices")
    op.drop_table("result_matches")
    op.drop_table("bank_hashes")
    op.drop_table("hash_banks")
    # SQLite (3.35+) drops a column that no index or constraint of the table refers to by name.
    op.drop_column("result_frames", "pdq")
    op.drop_column("results", "matches")
    op.drop_column("results", "pdq_quality")
    op.drop_column("results", "pdq")
    op.execute(_SCAN_RESULTS.format(extra=""))
    op.execute(_SCAN_FRAMES.format(extra=""))
