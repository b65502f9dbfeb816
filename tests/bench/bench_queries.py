"""The queries analysts and the service run, timed on PostgreSQL with many result rows over many scans.

    python tests/bench/bench_queries.py [--rows 1000000] [--scans 100] [--timeout 60] [--json] [--keep]

Makes a throwaway database on the shared server (127.0.0.1:5432), migrates it with dfscan's own migrations
(whatever schema they make: partitioned by scan or not), registers ``--scans`` scans with ``db.create_scan``
and loads ``--rows`` synthetic result rows over them with COPY (every scan the same archive of
``rows / scans`` paths, as nightly re-scans are; 2 % errors, 1 % copies, 0.1 % videos with 4 frames each,
2 % with provenance, 0.1 % matched against a bank, 1 % of scan 4's images with a face; 2 % of the images near
copies of the one before them, 0 to 31 bits apart, and 0.1 % blank, one PDQ for all), ends each scan with
``db.finish_scan`` as the product does (its counters, ``scan_sources`` and ``scan_near_copies``; timed apart
from the COPY), then VACUUM ANALYZE.  The first half of the scans ran one model, the rest and scan 2 the current one.
Then, with EXPLAIN (ANALYZE, BUFFERS), it runs:

* every query of docs/sql.md (``-- query: NAME``);
* the statements `dfscan results` sends (its filters: none, --label fake, --status error, --min-p 0.9,
  --declared, --limit 100), captured from ``db.iter_results`` as the command calls it;
* the statements `dfscan report` sends (``dfscan.report.collect``), captured the same way;
* /v1/scans/{id}/results keyset paging: the first page and a deep one (90 % into the scan), captured from
  the server's own slice function.

and prints, per statement: the kind of scan on ``results`` (index / partition / seq), the rows read from
``results`` (and from every table), and the time.  ``full`` marks a plan that reads the whole of
``results`` (a seq scan of the plain table, or of every partition).  A statement that runs past
``--timeout`` seconds is reported as such.  The database is dropped at the end unless ``--keep``.
Not a test: nothing here asserts a speed (tests/test_bench_queries.py runs it small and checks the plans).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
FILES_PER_FOLDER = 1000
COPY_BLOCK = 20_000
GENERATORS = ("Stable Diffusion", "Midjourney", "Adobe Photoshop", "DALL-E", "GIMP")


@dataclass
class Measured:
    group: str
    name: str
    plan: str = ""
    results_rows: int = 0
    rows_read: int = 0
    partitions: int = 0
    full: bool = False
    ms: float | None = None
    note: str = ""
    nodes: list[str] = field(default_factory=list)


# --- the data --------------------------------------------------------------------------------


@contextlib.contextmanager
def throwaway_database(keep: bool = False) -> Iterator[str]:
    import psycopg

    name = f"dfscan_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        if not keep:
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            print(f"kept database {name}", file=sys.stderr)


def _hexbytes(b: bytes) -> str:
    return "\\\\x" + b.hex()  # bytea in COPY's text format: the backslash of \x escaped


N = "\\N"  # NULL in COPY's text format


def _near_copy(pdq: str, bits: int, *, seed: int) -> str:
    """``pdq`` with ``bits`` bits flipped, none in one eighth of it (so the two share it: a candidate pair)."""
    import random

    rng = random.Random(seed)
    keep = seed % 8  # the eighth left intact: bits 32 * keep .. 32 * keep + 31
    flips = rng.sample([b for b in range(256) if b // 32 != keep], bits)
    return f"{int(pdq, 16) ^ sum(1 << (255 - b) for b in flips):064x}"


class Archive:
    """The paths every scan took in, and what is fixed per path: each row's columns that no scan changes.

    Rows are made column-wise (lists of text) and joined once per row: the loader's Python must stay
    well ahead of the server's COPY on two shared cores.
    """

    def __init__(self, per_scan: int) -> None:
        from dfscan.db.paths import path_hash

        self.n = per_scan
        idx = range(per_scan)
        self.paths = [f"/archive/d{i // FILES_PER_FOLDER:05d}/img{i:08d}.jpg" for i in idx]
        self.path_hash = [_hexbytes(path_hash(p)) for p in self.paths]
        self.error = [i % 50 == 7 for i in idx]  # 2 %
        self.video = [i % 1000 == 3 for i in idx]  # 0.1 %, 4 frames each
        self.provenance = list(range(11, per_scan, 50))  # 2 %, 1 % declared synthetic
        self.matched = list(range(5, per_scan, 1000))  # 0.1 %
        self.faces = list(range(13, per_scan, 100))  # 1 % of scan 4's images
        # Every 100th file has the bytes of the one before it (a copy under another name).
        content = [hashlib.sha256(self.paths[i - 1 if i % 100 == 1 else i].encode()).hexdigest() for i in idx]
        pdq = [hashlib.sha256(b"pdq" + p.encode()).hexdigest() for p in self.paths]
        # 2 %: a near copy of the image before, k bits apart, k = 0..31.  Files 21 and 23 of each hundred: one in
        # each class modulo 4, so that the most likely fakes of every scan (a stride of 4,096 files: see p_idx)
        # include some, and the guide's query 18 has pairs to report.
        for i in [*range(21, per_scan, 100), *range(23, per_scan, 100)]:
            pdq[i] = _near_copy(pdq[i - 1], (i // 100 + i % 100) % 32, seed=i)
        for i in range(41, per_scan, 1000):  # 0.1 %: blank images, all the same hash (a star, docs/sql.md)
            pdq[i] = "0" * 64
        self.pdq = pdq
        err, vid = self.error, self.video
        self.static: dict[str, list[str]] = {
            "path_hash": self.path_hash,
            "path": self.paths,
            "size": [str(20_000 + i % 5000) for i in idx],
            "mtime": ["1767225600.0"] * per_scan,
            "status": ["error" if e else "ok" for e in err],
            "error": ["cannot decode" if e else N for e in err],
            "error_code": [("decode-failed" if i % 100 == 7 else "truncated") if err[i] else N for i in idx],
            "kind": ["video" if v else "image" for v in vid],
            "frames": ["4" if v else N for v in vid],
            "duration_s": ["2.0" if v else N for v in vid],
            "notes": [N] * per_scan,
            "content_hash": [N if err[i] else content[i] for i in idx],
            "verdict_source": ["copy" if i % 100 == 1 else "computed" for i in idx],
            "etag": [N] * per_scan,
            "pdq": [N if err[i] or vid[i] else pdq[i] for i in idx],
            "pdq_quality": [N if err[i] or vid[i] else "80" for i in idx],
            "matches": ["1" if i % 1000 == 5 else N for i in idx],
            "synthetic_declared": [("t" if i % 100 == 11 else "f") if i % 50 == 11 else N for i in idx],
        }


P_POOL = 4096
_P_TEXT = [f"{(j + 0.5) / P_POOL:.6f}" for j in range(P_POOL)]
_C_TEXT = [f"{max((j + 0.5) / P_POOL, 1 - (j + 0.5) / P_POOL):.6f}" for j in range(P_POOL)]


def _table_columns(conn: Any, table: str) -> dict[str, tuple[bool, bool]]:
    """column -> (not null, has a default) of ``table``."""
    rows = conn.execute(
        "SELECT column_name, is_nullable = 'NO', column_default IS NOT NULL OR is_identity = 'YES' "
        "FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = %s", (table,)
    ).fetchall()
    return {name: (notnull, default) for name, notnull, default in rows}


def _copy_columns(conn: Any, table: str, columns: dict[str, list[str]]) -> int:
    """COPY into ``table`` the columns of ``columns`` it has (text lists of one length; \\N is NULL)."""
    have = _table_columns(conn, table)
    if not have:
        return 0
    missing = [c for c, (notnull, default) in have.items() if notnull and not default and c not in columns]
    if missing:
        raise SystemExit(f"bench_queries does not know how to fill {table}.{', '.join(missing)}: add them")
    cols = [c for c in columns if c in have]
    lists = [columns[c] for c in cols]
    n = len(lists[0])
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
        for start in range(0, n, COPY_BLOCK):
            part = [col[start:start + COPY_BLOCK] for col in lists]
            copy.write("\n".join(map("\t".join, zip(*part))) + "\n")
    return n


def _children(a: Archive, scan_id: int, p_idx: list[int]) -> dict[str, dict[str, list[str]]]:
    """The child rows of one scan: faces (scan 4), video frames, provenance, matches."""
    sid = str(scan_id)

    def keyed(rows: list[int]) -> dict[str, list[str]]:
        return {"scan_id": [sid] * len(rows), "path_hash": [a.path_hash[i] for i in rows],
                "path": [a.paths[i] for i in rows]}

    def const(value: str, rows: list[int]) -> list[str]:
        return [value] * len(rows)

    faces = a.faces if scan_id == 4 else []
    videos = [i for i in range(3, a.n, 1000)]
    frames = [v for v in videos for _ in range(4)]
    prov, matched = a.provenance, a.matched
    return {
        "result_faces": {**keyed(faces), "face_index": const("0", faces), "x": const("10", faces),
                         "y": const("12", faces), "w": const("64", faces), "h": const("64", faces),
                         "detector_score": const("0.99", faces), "p_fake": [_P_TEXT[p_idx[i]] for i in faces],
                         "label": ["fake" if p_idx[i] >= P_POOL // 2 else "real" for i in faces]},
        "result_frames": {**keyed(frames), "track": const("0", frames),
                          "frame_index": [str(k % 4) for k in range(len(frames))],
                          "timestamp_s": [f"{(k % 4) * 0.5:.1f}" for k in range(len(frames))],
                          "x": const(N, frames), "y": const(N, frames), "w": const(N, frames), "h": const(N, frames),
                          "p_fake": const(N, frames), "track_p_fake": [_P_TEXT[p_idx[i]] for i in frames],
                          "pdq": const(N, frames)},
        "result_provenance": {
            **keyed(prov), "c2pa": ["embedded" if i % 200 == 11 else "none" for i in prov],
            "c2pa_state": [("invalid" if i % 400 == 11 else "valid") if i % 200 == 11 else N for i in prov],
            "c2pa_codes": ["assertion.dataHash.mismatch" if i % 400 == 11 else N for i in prov],
            "signer": ["Example CA" if i % 200 == 11 else N for i in prov], "issuer": const(N, prov),
            "generator": [GENERATORS[(i // 50) % len(GENERATORS)] for i in prov],
            "claim_generator": const(N, prov), "creator_tool": const(N, prov), "settings_key": const(N, prov),
            "source_type": ["trainedAlgorithmicMedia" if i % 100 == 11 else "digitalCapture" for i in prov],
            "watermark": const(N, prov), "watermark_ber": const(N, prov),
            "synthetic_declared": ["t" if i % 100 == 11 else "f" for i in prov], "error": const(N, prov)},
        "result_matches": {**keyed(matched), "bank_id": const(N, matched), "bank": const("known", matched),
                           "ref": [f"ref-{i}" for i in matched], "label": const("known-fake", matched),
                           "distance": const("3", matched), "frame": const(N, matched),
                           "hash": [a.pdq[i] for i in matched]},
    }


def _model_of(k: int, scans: int) -> int:
    """The model (0 or 1) of the k-th scan: the first half of the scans ran the first model, the rest the second
    (the "current" one), and so did scan 2 (k = 1): the guide's query 7 compares scan 2, by the current model,
    with scans 1 and 3, by the previous one."""
    return 1 if k == 1 or k >= scans // 2 else 0


def _finish(url: str, scan_id: int, day: datetime, per_scan: int) -> None:
    """End a loaded scan as the product does (``db.finish_scan``: its counters, ``scan_sources``,
    ``scan_folders`` and ``scan_near_copies``), then set the counters from the rows it has: the loader records
    no chunks, whose sums finish_scan stores."""
    from sqlalchemy import update

    from dfscan import db
    from dfscan.db.models import Scan

    engine = db.make_engine(url)
    try:
        with db.session_factory(engine).begin() as s:
            db.finish_scan(s, scan_id=scan_id, status="completed")
            s.execute(update(Scan).where(Scan.id == scan_id).values(
                walk_done=True, started_at=day, finished_at=day + timedelta(hours=2), total=per_scan))
    finally:
        engine.dispose()


@contextlib.contextmanager
def _bulk(conn: Any, scan_id: int) -> Iterator[str]:
    """The table to COPY a scan's rows into: its partition detached and bare, attached again after the COPY.

    Attaching builds the partition's key and indexes from the parent's in one sorted pass each, where a COPY
    into the attached partition enters every row in every index (about 2.5x slower on two cores).  The result
    is the partition the product makes (``db._partitions.create_partition``), filled.
    """
    from dfscan.db._partitions import partition_of

    part = partition_of(scan_id)
    if not conn.execute("SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE c.relname = %s",
                        (part,)).fetchone():
        yield "results"  # not partitioned (an older schema): into the table, with its indexes
        return
    conn.execute(f"ALTER TABLE results DETACH PARTITION {part}")
    for (name,) in conn.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype IN "
                                "('p', 'u')", (part,)).fetchall():
        conn.execute(f'ALTER TABLE {part} DROP CONSTRAINT "{name}"')
    for (name,) in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", (part,)).fetchall():
        conn.execute(f'DROP INDEX "{name}"')
    yield part
    conn.execute(f"ALTER TABLE results ATTACH PARTITION {part} FOR VALUES IN ({int(scan_id)})")


def load(url: str, rows: int, scans: int, *, log: Callable[[str], None]) -> dict[str, Any]:
    """Migrate, register ``scans`` scans and COPY ``rows`` result rows (and their child rows) over them."""
    import psycopg

    from dfscan import db

    per_scan = rows // scans
    engine = db.make_engine(url)
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    with sessions() as s:
        models = [db.get_or_create_model(s, sha256=f"{m:064x}", name=f"model-{m}", path=f"/models/{m}.onnx",
                                         info={}) for m in (1, 2)]
        ids = [db.create_scan(s, name=f"nightly {k}", roots=["/archive"], model_id=models[_model_of(k, scans)],
                              threshold=0.5, settings={}) for k in range(scans)]
        s.commit()
    engine.dispose()
    archive = Archive(per_scan)
    err = archive.error
    t0 = time.perf_counter()
    loaded: dict[str, int] = {}
    finish_s = 0.0  # ending the scans (db.finish_scan), not counted in the COPY's rate
    raw = url.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(raw) as conn:
        for k, scan_id in enumerate(ids):
            day = base + timedelta(days=k)
            shift = (k * 2654435761) % P_POOL
            # Each scan scores the same files a little differently: p_fake from a shifted pattern.
            p_idx = [(i * 40503 + shift) % P_POOL for i in range(per_scan)]
            faces = set(archive.faces) if scan_id == 4 else None
            columns = {
                "scan_id": [str(scan_id)] * per_scan,
                "model_id": [str(models[_model_of(k, scans)])] * per_scan,
                "label": [N if e else ("fake" if j >= P_POOL // 2 else "real") for e, j in zip(err, p_idx)],
                "p_fake": [N if e else _P_TEXT[j] for e, j in zip(err, p_idx)],
                "confidence": [N if e else _C_TEXT[j] for e, j in zip(err, p_idx)],
                "scanned_at": [day.isoformat(sep=" ")] * per_scan,
                "faces": [N] * per_scan if faces is None else ["1" if i in faces else "0" for i in range(per_scan)],
                "faces_found": [N] * per_scan if faces is None else ["1" if i in faces else "0" for i in range(per_scan)],
                **archive.static,
            }
            with _bulk(conn, scan_id) as table:
                loaded["results"] = loaded.get("results", 0) + _copy_columns(conn, table, columns)
            for table, cols in _children(archive, scan_id, p_idx).items():
                loaded[table] = loaded.get(table, 0) + _copy_columns(conn, table, cols)
            conn.commit()
            t_finish = time.perf_counter()
            _finish(url, scan_id, day, per_scan)
            finish_s += time.perf_counter() - t_finish
            if (k + 1) % max(1, scans // 10) == 0:
                done = (k + 1) * per_scan
                log(f"  loaded {done:,} rows ({done / (time.perf_counter() - t0):,.0f} rows/s)")
    copy_s = time.perf_counter() - t0 - finish_s
    t1 = time.perf_counter()
    with psycopg.connect(raw, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        near = dict(conn.execute("SELECT scan_id, COUNT(*) FROM scan_near_copies GROUP BY scan_id").fetchall())
    return {"rows": loaded, "scans": scans, "per_scan": per_scan, "copy_s": round(copy_s, 1),
            "finish_scan_s": round(finish_s, 1), "finish_scan_per_scan_s": round(finish_s / scans, 2),
            "near_copy_rows": {k: near.get(k, 0) for k in ids},
            "rows_per_s": round(loaded["results"] / copy_s), "vacuum_analyze_s": round(time.perf_counter() - t1, 1),
            "database_bytes": size}


# --- the statements ---------------------------------------------------------------------------


@contextlib.contextmanager
def captured(engine: Any) -> Iterator[list[tuple[str, Any]]]:
    """Every SELECT the engine sends while inside, as (statement, parameters)."""
    from sqlalchemy import event

    seen: list[tuple[str, Any]] = []

    def note(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


def product_statements(url: str, scan_id: int, per_scan: int) -> list[tuple[str, str, str, Any]]:
    """(group, name, statement, parameters) of `dfscan results`, `dfscan report` and the API's paging."""
    from dfscan import db
    from dfscan.report import collect
    from dfscan.serve._results import Query, _slice

    engine = db.make_engine(url)
    sessions = db.session_factory(engine)
    out: list[tuple[str, str, str, Any]] = []
    filters = {
        "(scan)": {},
        "--label fake": {"label": "fake"},
        "--status error": {"status": "error"},
        "--min-p 0.9": {"min_p": 0.9},
        "--declared": {"declared": True},
        "--limit 100": {"limit": 100},
    }
    try:
        for name, kw in filters.items():
            with sessions() as s, captured(engine) as seen:
                rows = db.iter_results(s, scan_id=scan_id, provenance=True, **kw)
                next(rows, None)  # the statement is sent; EXPLAIN ANALYZE below runs it to the end
                rows.close()  # type: ignore[attr-defined]
            out += [("dfscan results", name, st, p) for st, p in seen]
        with sessions() as s, captured(engine) as seen:
            collect(s, scan_id)
        out += [("dfscan report", f"#{i + 1} {_tables(st)}", st, p) for i, (st, p) in enumerate(seen)]
        deep = f"/archive/d{int(per_scan * 0.9) // FILES_PER_FOLDER:05d}/img{int(per_scan * 0.9):08d}.jpg"
        for name, after in (("first page", None), ("deep page (90 %)", deep)):
            q = Query(scan_id=scan_id, label=None, min_p=None, status=None, after_path=after, limit=1000)
            with captured(engine) as seen:
                _slice(sessions, q, after, 1000)
            out += [("/v1/scans/{id}/results", name, st, p) for st, p in seen]
    finally:
        engine.dispose()
    return out


def _tables(statement: str) -> str:
    """The relations a statement reads, for its row in the table: ``results+scan_provenance``."""
    import re

    names = re.findall(r"\b(?:FROM|JOIN)\s+([a-z_]+)", statement, flags=re.IGNORECASE)
    return "+".join(dict.fromkeys(n for n in names if n.lower() != "select"))


# --- plans ------------------------------------------------------------------------------------


def results_relations(conn: Any) -> tuple[set[str], int]:
    """Names of ``results`` and its partitions, and how many partitions it has (0: a plain table)."""
    parts = {r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'results'").fetchall()}
    return parts | {"results"}, len(parts)


def analyse(plan: dict[str, Any], results: set[str], n_partitions: int, m: Measured) -> None:
    """Fill ``m`` from an EXPLAIN (ANALYZE, FORMAT JSON) plan."""
    kinds: dict[str, set[str]] = {}
    seq_parts: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        loops = node.get("Actual Loops", 0)
        rel = node.get("Relation Name")
        if rel and loops:
            read = (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
                    + node.get("Rows Removed by Index Recheck", 0)) * loops
            m.rows_read += read
            kind = {"Seq Scan": "seq", "Index Scan": "index", "Index Only Scan": "index-only",
                    "Bitmap Heap Scan": "bitmap"}.get(node["Node Type"], node["Node Type"])
            if rel in results:
                m.results_rows += read
                kinds.setdefault(kind, set()).add(rel)
                if kind == "seq":
                    seq_parts.add(rel)
            m.nodes.append(f"{kind} {rel}{'' if not node.get('Index Name') else ' ' + node['Index Name']}")
        for child in node.get("Plans", ()):
            walk(child)

    walk(plan["Plan"])
    touched = set().union(*kinds.values()) if kinds else set()
    m.partitions = len(touched - {"results"})
    m.full = ("results" in seq_parts) or (n_partitions > 1 and len(seq_parts) >= n_partitions)
    parts = []
    for kind in sorted(kinds):
        rels = kinds[kind]
        what = "partition" if n_partitions and rels - {"results"} else "table"
        parts.append(f"{kind} ({len(rels)} {what}{'s' if len(rels) > 1 else ''})")
    m.plan = ", ".join(parts) or "no results scan"
    if m.full:
        m.plan += " FULL"
    m.ms = round(plan.get("Execution Time", 0.0) + plan.get("Planning Time", 0.0), 1)


def explain(conn: Any, statement: str, params: Any, m: Measured, results: set[str], n_partitions: int,
            timeout_s: float) -> None:
    import psycopg

    conn.execute(f"SET statement_timeout = {int(timeout_s * 1000)}")
    try:
        row = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, params or None).fetchone()
    except psycopg.errors.QueryCanceled:
        conn.rollback()
        m.ms = None
        m.note = f"> {timeout_s:.0f} s (stopped)"
        m.full = True
        # The plan it would run, without running it.
        plan = conn.execute("EXPLAIN (FORMAT JSON) " + statement, params or None).fetchone()[0][0]
        m.plan = "not finished: " + ", ".join(sorted(_kinds(plan["Plan"], results)))
        return
    finally:
        conn.execute("SET statement_timeout = 0")
    analyse(row[0][0], results, n_partitions, m)
    conn.rollback()


def _kinds(node: dict[str, Any], results: set[str]) -> set[str]:
    out = set()
    if node.get("Relation Name") in results:
        out.add(node["Node Type"].lower())
    for child in node.get("Plans", ()):
        out |= _kinds(child, results)
    return out


def run(rows: int, scans: int, timeout_s: float, *, keep: bool = False, seqscan: bool = True,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load, measure every statement, return {"load": ..., "statements": [Measured as dict, ...]}.

    ``seqscan`` False plans with sequential scans, bitmap scans and sorts off: a small table is then still read
    through an index where one can serve the statement (in order, for a LIMIT), as a large one would be."""
    import psycopg

    from tests.test_sql_guide import guide_queries

    measured: list[Measured] = []
    with throwaway_database(keep) as url:
        log(f"loading {rows:,} rows over {scans} scans into {url.rsplit('/', 1)[1]} ...")
        info = load(url, rows, scans, log=log)
        log(f"  COPY {info['copy_s']} s ({info['rows_per_s']:,} rows/s), finish_scan {info['finish_scan_s']} s "
            f"({info['finish_scan_per_scan_s']} s a scan; scan_near_copies rows of scan 6: "
            f"{info['near_copy_rows'].get(6, 0):,}), "
            f"VACUUM ANALYZE {info['vacuum_analyze_s']} s, "
            f"database {info['database_bytes'] / 2**30:.2f} GiB")
        statements = [("docs/sql.md", name, sql, None) for name, sql in guide_queries().items()]
        statements += product_statements(url, 1, info["per_scan"])
        raw = url.replace("postgresql+psycopg", "postgresql")
        with psycopg.connect(raw) as conn:
            if not seqscan:
                # Plan as for a large table: any index path that serves the statement (in order, for a LIMIT)
                # is taken over reading the table and sorting it.
                for setting in ("enable_seqscan", "enable_bitmapscan"):
                    conn.execute(f"SET {setting} = off")
                conn.commit()
            results, n_partitions = results_relations(conn)
            for group, name, sql, params in statements:
                _session_of(conn, group)
                m = Measured(group, name)
                explain(conn, sql, params, m, results, n_partitions, timeout_s)
                measured.append(m)
                log(_line(m))
        pruned = _time_prune(url, scans, log)
    return {"load": info, "partitions": n_partitions, "statements": [asdict(m) for m in measured], "prune": pruned}


def _session_of(conn: Any, group: str) -> None:
    """The product's statements run with its session settings (``db.engine.PG_SESSION_SETTINGS``); the guide's
    queries, which analysts send from their own clients, with the server's."""
    from dfscan.db.engine import PG_SESSION_SETTINGS

    for statement in PG_SESSION_SETTINGS:  # "SET name = value"
        conn.execute(f"RESET {statement.split()[1]}" if group == "docs/sql.md" else statement)


def _time_prune(url: str, scan_id: int, log: Callable[[str], None]) -> dict[str, Any]:
    """`dfscan prune --scan N` of the last scan (its rows in every table), dry run then for real, timed."""
    from dfscan import db
    from dfscan.db.retention import prune

    engine = db.make_engine(url)
    try:
        out = {}
        for dry in (True, False):
            t = time.perf_counter()
            report = prune(engine, scan_ids=[scan_id], dry_run=dry)
            out["dry_run_s" if dry else "prune_s"] = round(time.perf_counter() - t, 2)
        out["rows"] = report.scans[0].rows
        out["partitions"] = list(report.scans[0].partitions)
    finally:
        engine.dispose()
    log(f"prune --scan {scan_id}: dry run {out['dry_run_s']} s, prune {out['prune_s']} s, "
        f"{sum(out['rows'].values()):,} rows, partitions dropped: {', '.join(out['partitions']) or 'none'}")
    return out


def _line(m: Measured) -> str:
    t = "—" if m.ms is None else f"{m.ms:,.1f}"
    return (f"{m.group:<24} {m.name[:34]:<34} {m.plan[:44]:<44} {m.results_rows:>12,} {m.rows_read:>12,} "
            f"{t:>10}  {m.note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--scans", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one statement may run")
    parser.add_argument("--json", action="store_true", help="print the whole measurement as JSON at the end")
    parser.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    args = parser.parse_args()
    if args.scans < 8 or args.rows < args.scans * 100:
        parser.error("need at least 8 scans (the guide's queries name scans 1 to 7) and 100 rows per scan")
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    log(f"{'group':<24} {'statement':<34} {'plan on results':<44} {'results rows':>12} {'rows read':>12} "
        f"{'ms':>10}")
    out = run(args.rows, args.scans, args.timeout, keep=args.keep, log=log)
    slow = [s for s in out["statements"] if s["ms"] is None or s["ms"] >= 2000]
    full = [s for s in out["statements"] if s["full"]]
    log(f"\n{len(out['statements'])} statements; {len(full)} read the whole of results; "
        f"{len(slow)} took 2 s or more: {', '.join(s['name'] for s in slow) or 'none'}")
    if args.json:
        print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
