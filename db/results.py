"""Writing verdicts and reading them back, in bounded memory."""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, insert, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ._dialects import dialect_name, insert_for
from ._partitions import partition_of
from ._pgcopy import UNIQUE_VIOLATION, copy_rows
from .banks import replace_matches
from .provenance import replace_provenance
from ._types import UTCDateTime
from ._views import rows_of_paths, view_select
from .models import VIEW_COLUMNS, Model, Result, ResultFace, ResultFrame, ResultProvenance, scan_results
from .paths import PATH_HASH_BYTES, path_hash
from .records import ResultRow

__all__ = ["PROVENANCE_COLUMNS", "ROW_COLUMNS", "copy_columns", "copy_values", "existing_paths", "iter_faces",
           "iter_frames", "iter_results", "write_batch"]

_RESULTS = Result.__table__
# The one list of what a write sets: the columns a re-scored path overwrites ((scan_id, path_hash) is the
# key).  Every column but model_id is the ResultRow field of the same name, so adding a column to the
# write path (SQLite's upsert, PostgreSQL's COPY, staging table and upsert) is one entry here.
_UPSERT_COLUMNS = (
    "model_id", "size", "mtime", "status", "label", "p_fake", "confidence", "error",
    "error_code", "scanned_at", "faces", "faces_found", "kind", "frames", "duration_s", "notes",
    "content_hash", "verdict_source", "etag", "pdq", "pdq_quality", "matches", "synthetic_declared",
)  # fmt: skip
# What each row carries, in this order: the path and every ResultRow field of _UPSERT_COLUMNS.
ROW_COLUMNS = ("path",) + tuple(c for c in _UPSERT_COLUMNS if c != "model_id")
_row_values = operator.attrgetter(*ROW_COLUMNS)
assert set(_UPSERT_COLUMNS) <= set(_RESULTS.c.keys()), "every written column is a column of results"
assert set(ROW_COLUMNS) <= set(ResultRow.__dataclass_fields__), "every written column but model_id is a ResultRow field"
_IN_LIST_SIZE = 500
STREAM_BATCH = 1000
# What iter_results(provenance=True) adds to a row: scan_provenance's columns but the key and
# synthetic_declared (scan_results has it).
PROVENANCE_COLUMNS = ("c2pa", "c2pa_state", "c2pa_codes", "signer", "generator", "source_type", "watermark",
                      "watermark_ber")


def write_batch(
    session: Session, *, scan_id: int, model_id: int, rows: Sequence[ResultRow]
) -> None:
    """Upsert a batch of results (any number: a batch, a chunk) on (scan_id, path_hash).

    Rewriting a path replaces its row, so a redelivered chunk writes the same
    rows again. Paths repeated within ``rows`` keep their last row: PostgreSQL
    refuses a statement that updates one key twice. Does not commit.

    PostgreSQL: ``COPY`` (see :func:`_write_pg`).  SQLite: one upsert statement
    executed with the batch's parameter list.
    """
    latest = {row.path: row for row in rows}
    if not latest:
        return
    if dialect_name(session) == "postgresql":
        _write_pg(session, scan_id, model_id, latest.values())
    else:
        keys = ROW_COLUMNS
        values = []
        for row in latest.values():
            value = dict(zip(keys, _row_values(row)))
            value["path_hash"] = path_hash(row.path)
            value["scan_id"] = scan_id
            value["model_id"] = model_id
            values.append(value)
        # One statement object per dialect, executed with the batch's parameter
        # list: SQLAlchemy compiles it once and caches it, where a multi-row
        # VALUES clause is compiled anew for every batch (about 15 ms for 64 rows).
        session.execute(_upsert_statement(session), values)
    # One look at each row for what most batches have none of; only a batch with some looks again.
    if any(row.faces is not None or row.kind == "video" or row.matches is not None or row.provenance is not None
           for row in latest.values()):
        _write_details(session, scan_id, list(latest.values()))


def _write_details(session: Session, scan_id: int, rows: list[ResultRow]) -> None:
    """What a batch's rows carry beside themselves: faces, video frames, bank matches, provenance."""
    if any(row.faces is not None for row in rows):
        _write_faces(session, scan_id, rows)
    videos = [row for row in rows if row.kind == "video"]
    if videos:
        _write_frames(session, scan_id, videos)
    if any(row.matches is not None for row in rows):
        replace_matches(session, scan_id, rows)
    if any(row.provenance is not None for row in rows):
        replace_provenance(session, scan_id, rows)


def _delete_paths(session: Session, table: Any, scan_id: int, paths: list[str]) -> None:
    keys = [path_hash(p) for p in paths]
    for start in range(0, len(keys), _IN_LIST_SIZE):
        session.execute(
            delete(table).where(table.scan_id == scan_id, table.path_hash.in_(keys[start : start + _IN_LIST_SIZE]))
        )


def _write_frames(session: Session, scan_id: int, rows: list[ResultRow]) -> None:
    """Replace the frame rows of a batch's videos (a re-scored video may have other tracks)."""
    _delete_paths(session, ResultFrame, scan_id, [row.path for row in rows])
    frames = [
        {"scan_id": scan_id, "path": row.path, "path_hash": path_hash(row.path), "track": f.track,
         "frame_index": f.frame_index,
         "timestamp_s": f.timestamp_s, "x": f.x, "y": f.y, "w": f.w, "h": f.h, "p_fake": f.p_fake,
         "track_p_fake": f.track_p_fake, "pdq": f.pdq}
        for row in rows
        for f in row.frame_rows
    ]
    if frames:
        session.execute(insert(ResultFrame), frames)


# COPY sends the rows' timestamps as ISO 8601 text, formatted once per distinct value (a batch shares one
# scanned_at) where the driver would format every row's anew; they go last in COPY's column list.  The key's
# path_hash goes first, after the prefix.
_TIMES = tuple(c for c in ROW_COLUMNS if isinstance(_RESULTS.c[c].type, UTCDateTime))
_PLAIN = tuple(c for c in ROW_COLUMNS if c not in _TIMES)
_COPY_COLUMNS = ("path_hash",) + _PLAIN + _TIMES
_plain_values = operator.attrgetter(*_PLAIN)


def _iso(t: datetime | None, texts: dict[datetime, str]) -> str | None:
    if t is None:
        return None
    text_ = texts.get(t)
    if text_ is None:
        if t.tzinfo is None or t.utcoffset() is None:  # as UTCDateTime refuses them
            raise ValueError(f"naive datetime {t!r}: pass an aware (UTC) datetime")
        text_ = texts[t] = t.isoformat()
    return text_


def _copy_values(rows: Iterable[ResultRow], prefix: tuple = ()) -> list[tuple]:
    """``prefix`` + the values of each row in the order of ``_COPY_COLUMNS``."""
    texts: dict[datetime, str] = {}
    plain = _plain_values
    sha256 = hashlib.sha256
    if len(_TIMES) == 1:
        time_of = operator.attrgetter(_TIMES[0])
        return [prefix + (sha256(row.path.encode()).digest()[:PATH_HASH_BYTES],) + plain(row)
                + (_iso(time_of(row), texts),) for row in rows]
    return [prefix + (path_hash(row.path),) + plain(row) + tuple(_iso(getattr(row, c), texts) for c in _TIMES)
            for row in rows]


def copy_columns() -> tuple[str, ...]:
    """The columns of ``results`` that the write path's ``COPY`` sends, in the order of :func:`copy_values`."""
    return ("scan_id", "model_id") + _COPY_COLUMNS


def copy_values(rows: Iterable[ResultRow], *, scan_id: int, model_id: int) -> list[tuple]:
    """The write path's ``COPY`` tuples for ``rows`` (the benchmark's write ceiling sends the same)."""
    return _copy_values(rows, (scan_id, model_id))


def _write_pg(session: Session, scan_id: int, model_id: int, rows: Iterable[ResultRow]) -> None:
    """``COPY`` the rows straight into ``results``; if any of their paths is there already, upsert them all.

    The first write of a chunk's paths (nearly every write) is a plain ``COPY``, in
    a savepoint, straight into the scan's partition (no routing of each row through the parent).  A
    unique violation (a chunk scored again, a path named twice in a scan) rolls back to the savepoint, and the rows are ``COPY``'d into a
    staging table and moved by one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``,
    which rewrites the rows that exist: the same rows either way.
    """
    try:
        copy_rows(session, _COPY_RESULTS.format(table=partition_of(scan_id)), _copy_values(rows, (scan_id, model_id)),
                  savepoint=True)
        return
    except IntegrityError as exc:
        if getattr(exc.orig, "sqlstate", None) != UNIQUE_VIOLATION:
            raise
    copy_rows(session, _STAGE_COPY, _copy_values(rows), setup=_STAGE_DDL)
    session.execute(_FROM_STAGE, {"scan_id": scan_id, "model_id": model_id})


_COPY_RESULTS = f"COPY {{table}} (scan_id, model_id, {', '.join(_COPY_COLUMNS)}) FROM STDIN"
# PostgreSQL's staging table: one per connection (temporary), emptied at every commit; the upsert empties it
# too (DELETE ... RETURNING feeds the INSERT), so two writes in one transaction never see each other's rows.
# Made from the columns of ``results`` themselves, so its types are theirs.
_STAGE = "dfscan_stage_results"


def _pg_type(column: str) -> str:
    return str(_RESULTS.c[column].type.compile(dialect=postgresql.dialect()))


_STAGE_DDL = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} ON COMMIT DELETE ROWS AS "
    f"SELECT path_hash, {', '.join(ROW_COLUMNS)} FROM {_RESULTS.name} WITH NO DATA"
)
_STAGE_COPY = f"COPY {_STAGE} ({', '.join(_COPY_COLUMNS)}) FROM STDIN"
_FROM_STAGE = text(
    f"WITH staged AS (DELETE FROM {_STAGE} RETURNING *) "
    f"INSERT INTO {_RESULTS.name} (scan_id, model_id, path_hash, {', '.join(ROW_COLUMNS)}) "
    f"SELECT CAST(:scan_id AS {_pg_type('scan_id')}), CAST(:model_id AS {_pg_type('model_id')}), "
    f"path_hash, {', '.join(ROW_COLUMNS)} FROM staged "
    f"ON CONFLICT (scan_id, path_hash) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _UPSERT_COLUMNS)
)


def _write_faces(session: Session, scan_id: int, rows: list[ResultRow]) -> None:
    """Replace the face rows of a batch's paths: one delete and one insert per batch.

    Delete first because a re-scored image may have fewer faces than before.
    """
    _delete_paths(session, ResultFace, scan_id, [row.path for row in rows])
    faces = [
        {"scan_id": scan_id, "path": row.path, "path_hash": path_hash(row.path), "face_index": f.index,
         "x": f.x, "y": f.y, "w": f.w, "h": f.h,
         "detector_score": f.detector_score, "p_fake": f.p_fake, "label": f.label}
        for row in rows
        for f in row.face_rows
    ]
    if faces:
        session.execute(insert(ResultFace), faces)


_UPSERTS: dict[str, Any] = {}


def _upsert_statement(session: Session) -> Any:
    name = dialect_name(session)
    stmt = _UPSERTS.get(name)
    if stmt is None:
        base = insert_for(session)(_RESULTS)
        stmt = base.on_conflict_do_update(
            index_elements=["scan_id", "path_hash"],
            set_={column: base.excluded[column] for column in _UPSERT_COLUMNS},
        )
        _UPSERTS[name] = stmt
    return stmt


def existing_paths(session: Session, scan_id: int, paths: list[str]) -> set[str]:
    """Which of ``paths`` (one chunk's worth) already have a result in this scan."""
    found: set[str] = set()
    by_key = {path_hash(p): p for p in paths}
    keys = list(by_key)
    for start in range(0, len(keys), _IN_LIST_SIZE):
        found.update(by_key[k] for k in session.execute(
            select(Result.path_hash).where(Result.scan_id == scan_id,
                                           Result.path_hash.in_(keys[start : start + _IN_LIST_SIZE]))
        ).scalars())
    return found


# scan_results' columns from results alone, in the view's order, whose order and keyset can use the key.  In
# the place of model_sha256 the row's model_id, which iter_results swaps for the model's sha256 after the read:
# a scan's rows name a model or two, and a read of a whole scan sorted by path then sorts 64 fewer bytes a row
# (1.35-1.45 s instead of 1.55-1.65 for a 1M-row scan at 100M rows, docs/benchmarks.md).
_RESULTS_VIEW = select(
    *(_RESULTS.c.model_id.label(c) if c == "model_sha256" else _RESULTS.c[c].label(c) for c in VIEW_COLUMNS)
).select_from(_RESULTS)
assert tuple(_RESULTS_VIEW.selected_columns.keys()) == tuple(scan_results.c.keys())


def iter_results(
    session: Session,
    *,
    scan_id: int | None = None,
    label: str | None = None,
    min_p: float | None = None,
    status: str | None = None,
    limit: int | None = None,
    after_path: str | None = None,
    declared: bool | None = None,
    provenance: bool = False,
    keyset: bool = False,
) -> Iterator[dict[str, Any]]:
    """Stream rows of the ``scan_results`` view (its columns, read from its tables), ordered by scan_id then path.

    Rows arrive in batches (a server-side cursor on PostgreSQL), so a scan of
    millions of images never sits in memory. Keys are the view's columns.
    ``keyset`` (and any ``limit``): ordered by the key instead, (scan_id, path_hash), which the primary key
    serves a page at a time at any size, reading only the rows returned; ``after_path`` (with ``scan_id``)
    then starts after that path's key: the HTTP API's
    paging.  ``declared`` keeps the rows whose file declares itself synthetic (or, False, those that do not);
    ``provenance`` adds the ``scan_provenance`` columns of :data:`PROVENANCE_COLUMNS` (None where none was read).
    """
    view = Result
    # A limited read is in key order too: the primary key serves its first rows without sorting the scan.
    keyset = keyset or limit is not None
    stmt = _RESULTS_VIEW.order_by(view.scan_id, view.path_hash if keyset else view.path)
    if provenance:
        p = ResultProvenance
        stmt = stmt.add_columns(*(getattr(p, name) for name in PROVENANCE_COLUMNS)).outerjoin(
            p, and_(p.scan_id == view.scan_id, p.path_hash == view.path_hash))
    if declared is not None:
        stmt = stmt.where(view.synthetic_declared.is_(True) if declared else view.synthetic_declared.isnot(True))
    if scan_id is not None:
        stmt = stmt.where(view.scan_id == scan_id)
    if label is not None:
        stmt = stmt.where(view.label == label)
    if min_p is not None:
        stmt = stmt.where(view.p_fake >= min_p)
    if status is not None:
        stmt = stmt.where(view.status == status)
    if after_path is not None:
        stmt = stmt.where(view.path_hash > path_hash(after_path) if keyset else view.path > after_path)
    if limit is not None:
        stmt = stmt.limit(limit)
    result = session.execute(stmt, execution_options={"yield_per": STREAM_BATCH})
    try:
        sha256 = dict(session.execute(select(Model.id, Model.sha256)).all())  # a row per model file
        for mapping in result.mappings():
            row = dict(mapping)
            row["model_sha256"] = sha256[row["model_sha256"]]
            yield row
    finally:
        result.close()


def iter_faces(session: Session, *, scan_id: int, paths: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
    """Rows of the ``scan_faces`` view for a scan (or some of its paths), by path then face index."""
    from .models import scan_faces

    return _iter_view(session, scan_faces, scan_id, paths, ("path", "face_index"))


def _iter_view(session: Session, view: Any, scan_id: int, paths: Sequence[str] | None,
               order: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """Rows of a per-path view for a scan, or for some of its paths (by their keys, in bounded IN lists)."""
    stmt = view_select(view).where(view.c.scan_id == scan_id).order_by(*(view.c[name] for name in order))
    if paths is not None:
        yield from rows_of_paths(session, stmt, view, paths)
        return
    yield from (dict(r) for r in session.execute(stmt).mappings())


def iter_frames(session: Session, *, scan_id: int, paths: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
    """Rows of the ``scan_frames`` view for a scan (or some of its videos), by path, track, frame."""
    from .models import scan_frames

    return _iter_view(session, scan_frames, scan_id, paths, ("path", "track", "frame_index"))
