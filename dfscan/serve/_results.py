"""Result rows of a scan over HTTP: keyset pages (a cursor on the path), JSON or CSV, streamed.

Rows come from :func:`dfscan.db.iter_results` (batches, a server-side cursor on
PostgreSQL), so a page of any size, or a whole scan with ``limit=0``, never sits
in memory as a whole; only a CSV page, whose next cursor goes in a header, is
held, and pages are at most ``MAX_PAGE`` rows.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from dfscan import db
from dfscan.serve.errors import BadRequest

__all__ = ["MAX_PAGE", "Query", "decode_cursor", "encode_cursor", "respond"]

MAX_PAGE = 10_000
COLUMNS = ("scan_id", "path", "status", "label", "p_fake", "confidence", "error", "model_sha256", "scanned_at")


@dataclass(frozen=True)
class Query:
    scan_id: int
    label: str | None
    min_p: float | None
    status: str | None
    after_path: str | None
    limit: int  # 0: every row


def encode_cursor(path: str) -> str:
    return base64.urlsafe_b64encode(path.encode("utf-8", "surrogateescape")).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        return raw.decode("utf-8", "surrogateescape")
    except (binascii.Error, ValueError):
        raise BadRequest(f"invalid cursor {cursor[:40]!r}: pass next_cursor from the previous page") from None


def _rows(sessions: sessionmaker[Session], q: Query) -> Iterator[dict[str, Any]]:
    with sessions() as session:
        yield from db.iter_results(session, scan_id=q.scan_id, label=q.label, min_p=q.min_p, status=q.status,
                                   after_path=q.after_path, limit=q.limit + 1 if q.limit else None)


def _cell(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def _json(sessions: sessionmaker[Session], q: Query) -> Iterator[bytes]:
    yield f'{{"scan_id": {q.scan_id}, "results": ['.encode()
    n = 0
    last: str | None = None
    more = False
    for row in _rows(sessions, q):
        if q.limit and n == q.limit:
            more = True
            break
        yield ((", " if n else "") + json.dumps({c: _cell(row[c]) for c in COLUMNS})).encode()
        last = row["path"]
        n += 1
    cursor = json.dumps(encode_cursor(last) if more and last is not None else None)
    yield f'], "count": {n}, "next_cursor": {cursor}}}\n'.encode()


def _csv_lines(rows: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(["" if row[c] is None else _cell(row[c]) for c in COLUMNS])
        if buf.tell() > 64 * 1024:
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode()


def respond(sessions: sessionmaker[Session], q: Query, fmt: str) -> StreamingResponse:
    if fmt == "json":
        return StreamingResponse(_json(sessions, q), media_type="application/json")
    if not q.limit:
        return StreamingResponse(_csv_lines(_rows(sessions, q)), media_type="text/csv")
    page = list(_rows(sessions, q))  # at most MAX_PAGE + 1 rows
    headers = {}
    if len(page) > q.limit:
        page = page[: q.limit]
        headers["X-Next-Cursor"] = encode_cursor(page[-1]["path"])
    return StreamingResponse(_csv_lines(iter(page)), media_type="text/csv", headers=headers)
