"""Provenance: what each file says about its own origin (C2PA, IPTC/XMP, generator settings, watermarks).

``result_provenance`` holds one row per file of a scan that was read for provenance, keyed like
``result_matches`` by ``(scan_id, path)``; the view ``scan_provenance`` shows analysts exactly
``scan_id, path, c2pa, c2pa_state, c2pa_codes, signer, generator, source_type, watermark,
watermark_ber, synthetic_declared``.  ``results`` gains ``synthetic_declared`` (NULL where provenance
was not read) and ``scan_results`` gains it at its end (dropped first and made again, every earlier
column kept).  Columns are added in place, never by rebuilding ``results``.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = "0015"
down_revision: str | None = "0014"
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
       r.etag AS etag,
       r.pdq AS pdq,
       r.pdq_quality AS pdq_quality,
       r.matches AS matches{extra}
FROM results AS r
JOIN models AS m ON m.id = r.model_id
"""
_SCAN_PROVENANCE = """
CREATE VIEW scan_provenance AS
SELECT p.scan_id AS scan_id,
       p.path AS path,
       p.c2pa AS c2pa,
       p.c2pa_state AS c2pa_state,
       p.c2pa_codes AS c2pa_codes,
       p.signer AS signer,
       p.generator AS generator,
       p.source_type AS source_type,
       p.watermark AS watermark,
       p.watermark_ber AS watermark_ber,
       p.synthetic_declared AS synthetic_declared
FROM result_provenance AS p
"""


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS scan_results")
    op.add_column("results", sa.Column("synthetic_declared", sa.Boolean(), nullable=True))
    op.create_table(
        "result_provenance",
        sa.Column("id", BigIntPK, nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("c2pa", sa.String(8), nullable=False),
        sa.Column("c2pa_state", sa.String(8), nullable=True),
        sa.Column("c2pa_codes", sa.Text(), nullable=True),
        sa.Column("signer", sa.Text(), nullable=True),
        sa.Column("issuer", sa.Text(), nullable=True),
        sa.Column("generator", sa.Text(), nullable=True),
        sa.Column("claim_generator", sa.Text(), nullable=True),
        sa.Column("creator_tool", sa.Text(), nullable=True),
        sa.Column("settings_key", sa.String(32), nullable=True),
        sa.Column("source_type", sa.String(64), nullable=True),
        sa.Column("watermark", sa.String(32), nullable=True),
        sa.Column("watermark_ber", sa.Double(), nullable=True),
        sa.Column("synthetic_declared", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_result_provenance")),
        sa.UniqueConstraint("scan_id", "path", name=op.f("uq_result_provenance_scan_id_path")),
        sa.CheckConstraint("c2pa IN ('none', 'embedded', 'remote', 'error')", name=op.f("ck_result_provenance_c2pa")),
        sa.CheckConstraint("c2pa_state IS NULL OR c2pa_state IN ('valid', 'invalid', 'trusted')",
                           name=op.f("ck_result_provenance_c2pa_state")),
        sa.ForeignKeyConstraint(["scan_id"], ["scans.id"], name=op.f("fk_result_provenance_scan_id_scans"),
                                ondelete="CASCADE"),
    )
    op.execute(_SCAN_RESULTS.format(extra=",\n       r.synthetic_declared AS synthetic_declared"))
    op.execute(_SCAN_PROVENANCE)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS scan_provenance")
    op.execute("DROP VIEW IF EXISTS scan_results")
    op.drop_table("result_provenance")
    op.drop_column("results", "synthetic_declared")
    op.execute(_SCAN_RESULTS.format(extra=""))
