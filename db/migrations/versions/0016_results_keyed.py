"""Results keyed for writing: (scan_id, path_hash), partitioned by scan on PostgreSQL (#27).

``results`` loses ``id``, its foreign keys to ``scans`` and ``models`` and every index on ``path``: its key
is ``(scan_id, path_hash)`` (``dfscan.db.paths.path_hash``: 16 bytes, so a path of any length fits), and
its indexes are ``(scan_id, status)``, ``(scan_id, p_fake)``, ``(model_id, path_hash)`` and
``(content_hash)`` (docs/sql.md says which query uses which).  On PostgreSQL it is partitioned by list of
``scan_id``: one partition per scan (``results_p<scan id>``), made here for every existing scan and by
``dfscan.db.scans.create_scan`` for new ones; the rows are copied across once, the key and indexes built
after them.  SQLite keeps a plain table with the same columns, rebuilt the same way.

The tables keyed by a scan's file (``result_faces``, ``result_frames``, ``result_matches``,
``match_notices``, ``result_provenance``, ``explanations``) gain ``path_hash`` and their keys and indexes
move from ``path`` to it.  ``path_hash`` is filled in SQL on PostgreSQL (``PATH_HASH_SQL``) and by the
Python function itself on SQLite (registered on the migration's connection).  The analysts' views
(scan_results, scan_faces, scan_frames, scan_matches, scan_provenance) gain ``path_hash`` as their last
column, so joins between them use the (scan_id, path_hash) keys; the downgrade makes them as 0015 did.

The downgrade puts ``id``, the foreign keys and the ``path`` indexes back; on PostgreSQL it fails on a
path too long for a btree index (the limit this migration lifts).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_DATETIME = sa.DateTime(timezone=True)
# Frozen copies (a migration never imports the code it migrates): dfscan.db.paths and dfscan.db.models.
PATH_HASH_SQL = "substring(sha256(convert_to({col}, 'UTF8')) from 1 for 16)"
_SQLITE_HASH = "dfscan_path_hash"
OK_HAS_P_FAKE = "status <> 'ok' OR (p_fake IS NOT NULL AND p_fake >= 0 AND p_fake <= 1)"
_CHECKS = {
    "status": "status IN ('ok', 'error', 'no-face')",
    "label": "label IS NULL OR label IN ('real', 'fake')",
    "ok_p_fake": OK_HAS_P_FAKE,
    "kind": "kind IN ('image', 'video')",
    "verdict_source": "verdict_source IN ('computed', 'copy', 'reused')",
}
# Every column of results but the key, in table order (migrations 0001-0015).
_COLUMNS = (
    "model_id", "path", "size", "mtime", "status", "label", "p_fake", "confidence", "error", "error_code",
    "scanned_at", "faces", "faces_found", "kind", "frames", "duration_s", "notes", "content_hash",
    "verdict_source", "etag", "pdq", "pdq_quality", "matches", "synthetic_declared",
)  # fmt: skip
_NEW_INDEXES = {
    "ix_results_scan_id_status": ["scan_id", "status"],
    "ix_results_scan_id_p_fake": ["scan_id", "p_fake"],
    "ix_results_model_id_path_hash": ["model_id", "path_hash"],
    "ix_results_content_hash": ["content_hash"],
}
_OLD_INDEXES = {
    "ix_results_scan_id_status": ["scan_id", "status"],
    "ix_results_scan_id_p_fake": ["scan_id", "p_fake"],
    "ix_results_path": ["path"],
    "ix_results_model_id_path": ["model_id", "path"],
    "ix_results_content_hash": ["content_hash"],
}
# (table, old key or index, new one, columns after scan_id and the path, unique?)
_CHILDREN = (
    ("result_faces", "uq_result_faces_scan_id_path_face_index", "uq_result_faces_scan_id_path_hash_face_index",
     ["face_index"], True),
    ("result_frames", "uq_result_frames_scan_id_path_track_frame_index",
     "uq_result_frames_scan_id_path_hash_track_frame_index", ["track", "frame_index"], True),
    ("result_matches", "ix_result_matches_scan_id_path", "ix_result_matches_scan_id_path_hash", [], False),
    ("match_notices", "uq_match_notices_scan_id_path_target", "uq_match_notices_scan_id_path_hash_target",
     ["target"], True),
    ("result_provenance", "uq_result_provenance_scan_id_path", "uq_result_provenance_scan_id_path_hash", [], True),
    ("explanations", "ix_explanations_scan_id_path", "ix_explanations_scan_id_path_hash", [], False),
)
_VIEWS = ("scan_results", "scan_faces", "scan_frames", "scan_matches", "scan_provenance")


def _path_hash(path: str | None) -> bytes | None:
    return None if path is None else hashlib.sha256(path.encode("utf-8")).digest()[:16]


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _hash_of(col: str) -> str:
    """SQL for the path hash of column ``col``: PostgreSQL's own functions, or the Python one on SQLite."""
    if _sqlite():
        op.get_bind().connection.driver_connection.create_function(_SQLITE_HASH, 1, _path_hash, deterministic=True)
        return f"{_SQLITE_HASH}({col})"
    return PATH_HASH_SQL.format(col=col)


# The analysts' views as 0015 left them; {extra} is where this revision adds ``path_hash`` (the last column),
# so a join between views can use the tables' (scan_id, path_hash) keys instead of ``path``.
_VIEW_SQL = {
    "scan_results": """
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
       r.matches AS matches,
       r.synthetic_declared AS synthetic_declared{extra}
FROM results AS r
JOIN models AS m ON m.id = r.model_id
""",
    "scan_faces": """
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
       f.label AS label{extra}
FROM result_faces AS f
""",
    "scan_frames": """
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
       f.track_p_fake AS track_p_fake,
       f.pdq AS pdq{extra}
FROM result_frames AS f
""",
    "scan_matches": """
CREATE VIEW scan_matches AS
SELECT m.scan_id AS scan_id,
       m.path AS path,
       m.bank AS bank,
       m.ref AS ref,
       m.label AS label,
       m.distance AS distance,
       m.frame AS frame{extra}
FROM result_matches AS m
""",
    "scan_provenance": """
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
       p.synthetic_declared AS synthetic_declared{extra}
FROM result_provenance AS p
""",
}
_VIEW_ALIAS = {"scan_results": "r", "scan_faces": "f", "scan_frames": "f", "scan_matches": "m", "scan_provenance": "p"}


@contextmanager
def _views_remade(with_path_hash: bool) -> Iterator[None]:
    """Drop the views on the tables rebuilt here; make them again, with ``path_hash`` last or (downgrade) without."""
    for name in _VIEWS:
        op.execute(f'DROP VIEW IF EXISTS "{name}"')
    yield
    for name in _VIEWS:
        extra = f",\n       {_VIEW_ALIAS[name]}.path_hash AS path_hash" if with_path_hash else ""
        op.execute(_VIEW_SQL[name].format(extra=extra))


def _results_columns(new: bool) -> list[sa.Column]:
    key = ([sa.Column("scan_id", sa.Integer(), nullable=False),
            sa.Column("path_hash", sa.LargeBinary(16), nullable=False)]
           if new else [sa.Column("id", BigIntPK, nullable=False), sa.Column("scan_id", sa.Integer(), nullable=False)])
    return key + [
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
        sa.Column("scanned_at", _DATETIME, nullable=False),
        sa.Column("faces", sa.Integer(), nullable=True),
        sa.Column("faces_found", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(8), server_default=sa.text("'image'"), nullable=False),
        sa.Column("frames", sa.Integer(), nullable=True),
        sa.Column("duration_s", sa.Double(), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("verdict_source", sa.String(8), server_default=sa.text("'computed'"), nullable=False),
        sa.Column("etag", sa.String(128), nullable=True),
        sa.Column("pdq", sa.String(64), nullable=True),
        sa.Column("pdq_quality", sa.Integer(), nullable=True),
        sa.Column("matches", sa.Integer(), nullable=True),
        sa.Column("synthetic_declared", sa.Boolean(), nullable=True),
    ]


def _checks(table: str) -> list[sa.CheckConstraint]:
    return [sa.CheckConstraint(sql, name=op.f(f"ck_{table}_{name}")) for name, sql in _CHECKS.items()]


def _swap_results(new: bool) -> None:
    """Copy ``results`` into a table of the other shape, drop it, and give the copy its name, key and indexes."""
    sqlite = _sqlite()
    columns = ", ".join(_COLUMNS)
    pk = "pk_results" if sqlite else "pk_results_next"
    if new:
        # PostgreSQL: the key and indexes are built after the rows (their names are the old table's until then).
        key = [sa.PrimaryKeyConstraint("scan_id", "path_hash", name=op.f(pk))] if sqlite else []
        op.create_table("results_next", *_results_columns(True), *key, *_checks("results"),
                        **({} if sqlite else {"postgresql_partition_by": "LIST (scan_id)"}))
        if not sqlite:
            for (scan_id,) in op.get_bind().execute(sa.text("SELECT id FROM scans ORDER BY id")):
                op.execute(f"CREATE TABLE results_p{int(scan_id)} PARTITION OF results_next "
                           f"FOR VALUES IN ({int(scan_id)})")
        op.execute(f"INSERT INTO results_next (scan_id, path_hash, {columns}) "
                   f"SELECT scan_id, {_hash_of('path')}, {columns} FROM results")
    else:
        op.create_table("results_next", *_results_columns(False), *_checks("results"),
                        sa.PrimaryKeyConstraint("id", name=op.f(pk)),
                        sa.UniqueConstraint("scan_id", "path", name=op.f("uq_results_scan_id_path")),
                        sa.ForeignKeyConstraint(["scan_id"], ["scans.id"], name=op.f("fk_results_scan_id_scans"),
                                                ondelete="CASCADE"),
                        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_results_model_id_models")))
        op.execute(f"INSERT INTO results_next (scan_id, {columns}) "
                   f"SELECT scan_id, {columns} FROM results ORDER BY scan_id, path")
    op.drop_table("results")
    op.rename_table("results_next", "results")
    if new:
        if not sqlite:
            op.execute("ALTER TABLE results ADD CONSTRAINT pk_results PRIMARY KEY (scan_id, path_hash)")
        indexes = _NEW_INDEXES
    else:
        if not sqlite:
            op.execute(f"ALTER TABLE results RENAME CONSTRAINT {pk} TO pk_results")
            op.execute("ALTER SEQUENCE IF EXISTS results_next_id_seq RENAME TO results_id_seq")
        indexes = _OLD_INDEXES
    for name, cols in indexes.items():
        op.create_index(name, "results", cols)


def _move_children(new: bool) -> None:
    sqlite = _sqlite()
    for table, old, nxt, rest, unique in _CHILDREN:
        drop, make = (old, nxt) if new else (nxt, old)
        cols = ["scan_id", "path_hash" if new else "path", *rest]
        if not unique:
            op.drop_index(drop, table_name=table)
        if new:
            op.add_column(table, sa.Column("path_hash", sa.LargeBinary(16), nullable=True))
            op.execute(f"UPDATE {table} SET path_hash = {_hash_of('path')}")
        if sqlite:
            with op.batch_alter_table(table, recreate="always") as batch:
                if unique:
                    batch.drop_constraint(drop, type_="unique")
                if new:
                    batch.alter_column("path_hash", existing_type=sa.LargeBinary(16), nullable=False)
                else:
                    batch.drop_column("path_hash")
                if unique:
                    batch.create_unique_constraint(op.f(make), cols)
        else:
            if unique:
                op.drop_constraint(drop, table, type_="unique")
            if new:
                op.alter_column(table, "path_hash", existing_type=sa.LargeBinary(16), nullable=False)
            else:
                op.drop_column(table, "path_hash")
            if unique:
                op.create_unique_constraint(op.f(make), table, cols)
        if not unique:
            op.create_index(make, table, cols)


def upgrade() -> None:
    with _views_remade(with_path_hash=True):
        _swap_results(new=True)
        _move_children(new=True)


def downgrade() -> None:
    with _views_remade(with_path_hash=False):
        _move_children(new=False)
        _swap_results(new=False)  # the partitions go with their parent
