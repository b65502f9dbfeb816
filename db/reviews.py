"""Analysts' decisions on a scan's files (#26): recording them, the current one per file, the review queue.

Every decision is a new row of ``reviews`` (a changed decision keeps the old row); ``scan_reviews`` shows the
latest per file. Both tables are keyed by ``(scan_id, path_hash)`` and joined on it (``dfscan.db.paths``).
The queue is paged by keyset: each page ends with a cursor (the last item's sort key) that the next starts after.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Subquery, and_, case, func, literal, select, tuple_
from sqlalchemy.orm import Session, aliased

from ._types import utcnow
from .errors import NotInScan, UnknownDecision
from .models import Result, Review
from .paths import path_hash

__all__ = ["DECISIONS", "ORDERS", "REVIEW_STATES", "QueueFilters", "QueuePage", "ReviewedItem", "copies_of",
           "current_decisions", "file_of", "history", "queue", "record_decision"]

DECISIONS = ("fake", "real", "unsure", "escalate")
REVIEW_STATES = ("undecided", "decided", *DECISIONS)
_IN_LIST_SIZE = 500


@dataclass(frozen=True)
class ReviewedItem:
    """A file's current decision with what the scan said about it."""

    scan_id: int
    path: str
    decision: str | None
    reviewer: str | None
    note: str | None
    decided_at: datetime | None
    status: str | None
    label: str | None
    p_fake: float | None
    kind: str | None
    content_hash: str | None
    faces: int | None


@dataclass(frozen=True)
class QueueFilters:
    """What the queue keeps: result label and status, review state (``undecided``, ``decided`` or a decision),
    a p_fake range, at least ``faces_min`` faces, and the kind of file."""

    label: str | None = None
    status: str | None = None
    review: str | None = None
    p_min: float | None = None
    p_max: float | None = None
    faces_min: int | None = None
    kind: str | None = None


@dataclass(frozen=True)
class QueuePage:
    items: list[dict[str, Any]]
    next_cursor: str | None  # None: the last page


def _check_decision(decision: str) -> None:
    if decision not in DECISIONS:
        raise UnknownDecision(f"unknown decision {decision!r}: known decisions are {', '.join(DECISIONS)}")


def record_decision(session: Session, scan_id: int, path: str, decision: str, reviewer: str, *,
                    api_key_id: int | None = None, note: str | None = None, copies: bool = False) -> list[str]:
    """Record ``decision`` on ``path`` of ``scan_id`` (and, with ``copies``, on every other file of the scan with
    the same content hash, each row saying which path was decided); returns the paths decided, ``path`` first.

    Raises :class:`NotInScan` when the scan has no result for ``path``; the caller commits.
    """
    _check_decision(decision)
    found = file_of(session, scan_id, path)
    if found is None:
        raise NotInScan(scan_id, path)
    paths = [path]
    if copies and found["content_hash"] is not None:
        paths += sorted(session.execute(
            select(Result.path).where(Result.scan_id == scan_id, Result.content_hash == found["content_hash"],
                                      Result.path_hash != path_hash(path))
        ).scalars())
    now = utcnow()
    session.add_all(
        Review(scan_id=scan_id, path=p, path_hash=path_hash(p), decision=decision, reviewer=reviewer,
               api_key_id=api_key_id, note=note, decided_at=now, copy_of=None if p == path else path)
        for p in paths
    )
    session.flush()
    return paths


def file_of(session: Session, scan_id: int, path: str) -> dict[str, Any] | None:
    """The result row of ``path`` in ``scan_id`` (path, kind, status, content_hash), or None: no such file."""
    row = session.execute(
        select(Result.path, Result.kind, Result.status, Result.content_hash)
        .where(Result.scan_id == scan_id, Result.path_hash == path_hash(path), Result.path == path)
    ).mappings().first()
    return None if row is None else dict(row)


def _current(scan_ids: Sequence[int]) -> Subquery:
    """The current decision per file of ``scan_ids``: the latest ``reviews`` row per (scan_id, path_hash), as the
    ``scan_reviews`` view has it (both walk the index on (scan_id, path_hash, id))."""
    later = aliased(Review)
    newest = select(func.max(later.id)).where(later.scan_id == Review.scan_id, later.path_hash == Review.path_hash)
    return (select(Review.scan_id, Review.path_hash, Review.path, Review.decision, Review.reviewer, Review.note,
                   Review.decided_at)
            .where(Review.scan_id.in_(list(scan_ids)), Review.id == newest.scalar_subquery())
            .subquery("current_review"))


def history(session: Session, scan_id: int, path: str) -> list[dict[str, Any]]:
    """Every decision ever made on ``path`` of ``scan_id``, oldest first."""
    r = Review
    rows = session.execute(
        select(r.decision, r.reviewer, r.note, r.decided_at, r.copy_of)
        .where(r.scan_id == scan_id, r.path_hash == path_hash(path)).order_by(r.id)
    ).mappings()
    return [dict(row) for row in rows]


def current_decisions(session: Session, scan_ids: Sequence[int]) -> list[ReviewedItem]:
    """The current decision on every decided file of ``scan_ids``, with its verdict; by scan then path."""
    current = _current(scan_ids)
    rv, v = current.c, Result
    stmt = (
        select(rv.scan_id, rv.path, rv.decision, rv.reviewer, rv.note, rv.decided_at,
               v.status, v.label, v.p_fake, v.kind, v.content_hash, v.faces)
        .select_from(current)
        .outerjoin(Result, and_(v.scan_id == rv.scan_id, v.path_hash == rv.path_hash))
        .where(rv.scan_id.in_(list(scan_ids)))
        .order_by(rv.scan_id, rv.path)
    )
    return [ReviewedItem(**row) for row in session.execute(stmt).mappings()]


# Orders are data: each is the tuple of ascending sort expressions that keyset paging compares.
def _sort_keys(order: str) -> tuple[Any, ...]:
    v = Result
    p = -func.coalesce(v.p_fake, literal(-1.0))  # errors (no p_fake) last
    tier = case((v.matches > 0, 0), (v.synthetic_declared.is_(True), 1), else_=2)
    keys = {"priority": (tier, p, v.path), "p_fake": (p, v.path), "path": (v.path,)}
    if order not in keys:
        raise UnknownDecision(f"unknown order {order!r}: known orders are {', '.join(ORDERS)}")
    return keys[order]


ORDERS = ("priority", "p_fake", "path")


def _encode_cursor(values: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, n: int) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, UnicodeDecodeError) as e:
        raise UnknownDecision(f"invalid cursor {cursor[:40]!r}") from e
    if not isinstance(values, list) or len(values) != n:
        raise UnknownDecision(f"invalid cursor {cursor[:40]!r}")
    return values


def queue(session: Session, scan_id: int, *, order: str = "priority", filters: QueueFilters = QueueFilters(),
          after: str | None = None, limit: int = 50) -> QueuePage:
    """One page of the files of ``scan_id`` to decide, in ``order`` (default: bank matches, files that declare
    themselves synthetic, then by p_fake, highest first), with each one's current decision."""
    current = _current([scan_id])
    v, rv = Result, current.c
    keys = _sort_keys(order)
    labelled = [k.label(f"_k{i}") for i, k in enumerate(keys)]
    stmt = (
        select(v.path, v.status, v.label, v.p_fake, v.confidence, v.error, v.kind, v.faces, v.faces_found,
               v.frames, v.duration_s, v.notes, v.content_hash, v.verdict_source, v.matches, v.synthetic_declared,
               rv.decision, rv.reviewer, rv.note, rv.decided_at, *labelled)
        .outerjoin(current, and_(rv.scan_id == v.scan_id, rv.path_hash == v.path_hash))
        .where(v.scan_id == scan_id)
        .order_by(*keys)
        .limit(limit + 1)
    )
    f = filters
    if f.label is not None:
        stmt = stmt.where(v.label == f.label)
    if f.status is not None:
        stmt = stmt.where(v.status == f.status)
    if f.review is not None:
        if f.review not in REVIEW_STATES:
            raise UnknownDecision(f"unknown review state {f.review!r}: known states are {', '.join(REVIEW_STATES)}")
        stmt = stmt.where({"undecided": rv.decision.is_(None), "decided": rv.decision.isnot(None)}
                          .get(f.review, rv.decision == f.review))
    if f.p_min is not None:
        stmt = stmt.where(v.p_fake >= f.p_min)
    if f.p_max is not None:
        stmt = stmt.where(v.p_fake <= f.p_max)
    if f.faces_min is not None:
        stmt = stmt.where(v.faces >= f.faces_min)
    if f.kind is not None:
        stmt = stmt.where(v.kind == f.kind)
    if after is not None:
        stmt = stmt.where(tuple_(*keys) > tuple_(*(literal(x) for x in _decode_cursor(after, len(keys)))))
    rows = [dict(r) for r in session.execute(stmt).mappings()]
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = _encode_cursor([rows[-1][f"_k{i}"] for i in range(len(keys))]) if more and rows else None
    items = []
    for row in rows:
        for i in range(len(keys)):
            row.pop(f"_k{i}")
        row["path_hash"] = path_hash(row["path"]).hex()
        items.append(row)
    return QueuePage(items, cursor)


def copies_of(session: Session, scan_id: int, content_hashes: Sequence[str]) -> dict[str, list[str]]:
    """The paths of ``scan_id`` holding each of ``content_hashes`` (the same bytes), by path."""
    v = Result
    out: dict[str, list[str]] = {}
    wanted = [h for h in dict.fromkeys(content_hashes) if h]
    for start in range(0, len(wanted), _IN_LIST_SIZE):
        rows = session.execute(
            select(v.content_hash, v.path)
            .where(v.scan_id == scan_id, v.content_hash.in_(wanted[start : start + _IN_LIST_SIZE]))
            .order_by(v.path)
        )
        for h, p in rows:
            out.setdefault(h, []).append(p)
    return out

