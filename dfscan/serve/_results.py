"""Result rows of a scan over HTTP: keyset pages (a cursor on the path), JSON or CSV, streamed.

Rows come in the order of the key of ``results``, (scan_id, path_hash) (``db.iter_results(keyset=True)``):
the primary key serves each page at the same cost however large the scan.

A stream is read from the database in slices of :data:`SLICE` rows, each one
keyset query in a short session of its own: the connection goes back to the
pool before the slice is sent, so a client that reads slowly (or a whole scan
with ``limit=0``) holds no connection, and a slice is the most a stream holds
in memory.  Slices are fetched in threads of a small pool of their own
(:data:`FETCHERS`), off the pool that runs the API's other endpoints.  Only a
CSV page, whose next cursor goes in a header, is read before the answer
starts; pages are at most ``MAX_PAGE`` rows.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import csv
import io
import json
from collections.abc import AsyncIterator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from dfscan import db
from dfscan.db.results import PROVENANCE_COLUMNS
from dfscan.serve.errors import BadRequest

__all__ = ["MAX_PAGE", "Query", "decode_cursor", "encode_cursor", "respond"]

MAX_PAGE = 10_000
SLICE = 1000  # rows per database query of a stream
FETCHERS = 4  # streams reading from the database at once (each holds a connection for one query)
COLUMNS = ("scan_id", "path", "status", "label", "p_fake", "confidence", "error", "model_sha256", "scanned_at",
           "synthetic_declared")
# A row's provenance (the scan_provenance view): a JSON row's ``provenance`` object (null where the file was
# not read for it), the CSV's last columns.
PROVENANCE = (*PROVENANCE_COLUMNS, "synthetic_declared")
CSV_COLUMNS = COLUMNS + PROVENANCE_COLUMNS


@dataclass(frozen=True)
class Query:
    scan_id: int
    label: str | None
    min_p: float | None
    status: str | None
    after_path: str | None
    limit: int  # 0: every row
    declared: bool | None = None  # only files that declare themselves synthetic (True) or don't (False)


def encode_cursor(path: str) -> str:
    return base64.urlsafe_b64encode(path.encode("utf-8", "surrogateescape")).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        # A stored path is valid UTF-8 without NUL (both databases refuse others): anything else names no row.
        path = raw.decode("utf-8")
        if "\x00" in path:
            raise ValueError("NUL in a cursor")
        return path
    except (binascii.Error, ValueError):
        raise BadRequest(f"invalid cursor {cursor[:40]!r}: pass next_cursor from the previous page") from None


# Its threads start on first use; a pool of its own, not the one that runs the API's other endpoints.
_FETCH_POOL = ThreadPoolExecutor(max_workers=FETCHERS, thread_name_prefix="results")


def _slice(sessions: sessionmaker[Session], q: Query, after: str | None, n: int) -> list[dict[str, Any]]:
    """Up to ``n`` rows after path ``after``, in a session that is closed before they are returned."""
    with sessions() as session:
        return list(db.iter_results(session, scan_id=q.scan_id, label=q.label, min_p=q.min_p, status=q.status,
                                    declared=q.declared, after_path=after, limit=n, provenance=True, keyset=True))


def _windows(q: Query) -> Iterator[int]:
    """Row counts of the slices of ``q``: ``limit + 1`` rows in all (the extra one: is there a next page?)."""
    left = q.limit + 1 if q.limit else None
    while left is None or left > 0:
        n = SLICE if left is None else min(SLICE, left)
        yield n
        if left is not None:
            left -= n


def _page(sessions: sessionmaker[Session], q: Query) -> list[dict[str, Any]]:
    """A whole CSV page (at most MAX_PAGE + 1 rows), read now, slice by slice."""
    out: list[dict[str, Any]] = []
    after = q.after_path
    for n in _windows(q):
        rows = _slice(sessions, q, after, n)
        out.extend(rows)
        if len(rows) < n:
            break
        after = rows[-1]["path"]
    return out


async def _slices(sessions: sessionmaker[Session], q: Query) -> AsyncIterator[list[dict[str, Any]]]:
    """The query's rows a slice at a time, each read in the fetch pool; no connection held between slices."""
    loop = asyncio.get_running_loop()
    after = q.after_path
    for n in _windows(q):
        rows = await loop.run_in_executor(_FETCH_POOL, _slice, sessions, q, after, n)
        if rows:
            yield rows
        if len(rows) < n:
            return
        after = rows[-1]["path"]


def _cell(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def _json_row(row: dict[str, Any]) -> str:
    data = {c: _cell(row[c]) for c in COLUMNS}
    data["provenance"] = None if row["c2pa"] is None else {c: row[c] for c in PROVENANCE}
    return json.dumps(data)


async def _json(sessions: sessionmaker[Session], q: Query) -> AsyncIterator[bytes]:
    yield f'{{"scan_id": {q.scan_id}, "results": ['.encode()
    n = 0
    last: str | None = None
    more = False
    async for rows in _slices(sessions, q):
        if q.limit and n + len(rows) > q.limit:
            rows = rows[: q.limit - n]
            more = True
        if rows:
            parts = [_json_row(row) for row in rows]
            yield ((", " if n else "") + ", ".join(parts)).encode()
            last = rows[-1]["path"]
            n += len(rows)
    cursor = json.dumps(encode_cursor(last) if more and last is not None else None)
    yield f'], "count": {n}, "next_cursor": {cursor}}}\n'.encode()


def _csv_text(rows: Iterable[dict[str, Any]], header: bool) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(["" if row[c] is None else _cell(row[c]) for c in CSV_COLUMNS])
    return buf.getvalue().encode()


async def _csv_stream(sessions: sessionmaker[Session], q: Query) -> AsyncIterator[bytes]:
    yield _csv_text((), header=True)
    async for rows in _slices(sessions, q):
        yield _csv_text(rows, header=False)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def respond(sessions: sessionmaker[Session], q: Query, fmt: str) -> StreamingResponse:
    """The answer to ``q``; only a CSV page with a limit reads its rows here (its next cursor is a header)."""
    if fmt == "json":
        return StreamingResponse(_json(sessions, q), media_type="application/json")
    if not q.limit:
        return StreamingResponse(_csv_stream(sessions, q), media_type="text/csv")
    page = _page(sessions, q)
    headers = {}
    if len(page) > q.limit:
        page = page[: q.limit]
        headers["X-Next-Cursor"] = encode_cursor(page[-1]["path"])
    return StreamingResponse(_once(_csv_text(page, header=True)), media_type="text/csv", headers=headers)
