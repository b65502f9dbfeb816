"""Hash banks: named lists of known hashes (PDQ, MD5, SHA-256), their contents, and the matches scans found.

A bank's ``version`` moves with every change to what it matches (hashes
added, enabled, disabled), and workers rebuild its index when it does
(:class:`dfscan.workers.hashing.Matcher`).  Hashes arrive validated
(:func:`dfscan.workers.hashing.parse_bank_lines`); they are written in
batches (PostgreSQL: ``COPY``), so a bank of a million hashes imports in
seconds.  Nothing here commits.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ._dialects import dialect_name
from ._pgcopy import copy_rows
from ._types import utcnow
from ._views import rows_of_paths, view_select
from .errors import DatabaseError
from .models import BankHash, HashBank, ResultMatch, scan_matches
from .notices import add_notices
from .paths import path_hash
from .records import ResultRow

__all__ = ["BANK_KINDS", "BankExists", "BankInfo", "BankNotFound", "add_hashes", "bank_entries", "bank_versions",
           "bank_webhooks", "create_bank", "drop_bank", "get_bank", "iter_hashes", "iter_matches", "list_banks",
           "match_count", "replace_matches", "set_enabled"]  # fmt: skip

BANK_KINDS = ("pdq", "md5", "sha256")
_WRITE_BATCH = 50_000
_IN_LIST_SIZE = 500


class BankNotFound(DatabaseError, LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no hash bank named {name!r} (dfscan bank list shows them)")


class BankExists(DatabaseError):
    def __init__(self, name: str) -> None:
        super().__init__(f"a hash bank named {name!r} exists already")


@dataclass(frozen=True)
class BankInfo:
    id: int
    name: str
    kind: str
    distance: int
    enabled: bool
    version: int
    size: int
    webhook_url: str | None
    created_at: datetime
    updated_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _info(bank: HashBank) -> BankInfo:
    return BankInfo(bank.id, bank.name, bank.kind, bank.distance, bank.enabled, bank.version, bank.size,
                    bank.webhook_url, bank.created_at, bank.updated_at)


def create_bank(session: Session, name: str, *, kind: str = "pdq", distance: int = 31,
                webhook_url: str | None = None) -> tuple[BankInfo, str | None]:
    """A new empty bank, and its webhook's signing secret (None without a webhook): shown once."""
    if kind not in BANK_KINDS:
        raise DatabaseError(f"unknown bank kind {kind!r}; known: {', '.join(BANK_KINDS)}")
    if not name.strip():
        raise DatabaseError("a bank needs a name")
    if not 0 <= distance <= 256:
        raise DatabaseError(f"a bank's distance is 0 to 256 bits, got {distance}")
    if session.scalar(select(HashBank.id).where(HashBank.name == name)) is not None:
        raise BankExists(name)
    secret = secrets.token_hex(32) if webhook_url else None
    bank = HashBank(name=name, kind=kind, distance=distance if kind == "pdq" else 0, enabled=True, version=1, size=0,
                    webhook_url=webhook_url, webhook_secret=secret)
    session.add(bank)
    try:
        session.flush()
    except IntegrityError:
        raise BankExists(name) from None
    return _info(bank), secret


def _bank(session: Session, name: str) -> HashBank:
    bank = session.scalar(select(HashBank).where(HashBank.name == name))
    if bank is None:
        raise BankNotFound(name)
    return bank


def get_bank(session: Session, name: str) -> BankInfo:
    return _info(_bank(session, name))


def list_banks(session: Session) -> list[BankInfo]:
    return [_info(b) for b in session.scalars(select(HashBank).order_by(HashBank.name))]


def _bump(session: Session, bank: HashBank, added: int = 0) -> None:
    session.execute(update(HashBank).where(HashBank.id == bank.id).values(
        version=HashBank.version + 1, size=HashBank.size + added, updated_at=utcnow()))
    session.expire(bank)


def add_hashes(session: Session, name: str, entries: Iterable[tuple[str, str | None, str | None]]) -> int:
    """Append ``(hash, ref, label)`` entries (already validated for the bank's kind) to bank ``name``; how many."""
    bank = _bank(session, name)
    pg = dialect_name(session) == "postgresql"
    it = iter(entries)
    total = 0
    while part := list(islice(it, _WRITE_BATCH)):
        if pg:
            copy_rows(session, "COPY bank_hashes (bank_id, hash, ref, label) FROM STDIN",
                      ((bank.id, h, ref, label) for h, ref, label in part))
        else:
            session.execute(insert(BankHash), [{"bank_id": bank.id, "hash": h, "ref": ref, "label": label}
                                               for h, ref, label in part])
        total += len(part)
    _bump(session, bank, total)
    return total


def iter_hashes(session: Session, name: str) -> Iterator[tuple[str, str | None, str | None]]:
    """Bank ``name``'s entries in the order they were added (a server-side cursor on PostgreSQL)."""
    bank = _bank(session, name)
    stmt = select(BankHash.hash, BankHash.ref, BankHash.label).where(BankHash.bank_id == bank.id).order_by(BankHash.id)
    result = session.execute(stmt, execution_options={"yield_per": _WRITE_BATCH})
    try:
        for h, ref, label in result:
            yield h, ref, label
    finally:
        result.close()


def set_enabled(session: Session, name: str, enabled: bool) -> BankInfo:
    bank = _bank(session, name)
    session.execute(update(HashBank).where(HashBank.id == bank.id).values(enabled=enabled))
    _bump(session, bank)
    return _info(_bank(session, name))


def drop_bank(session: Session, name: str) -> None:
    """Delete a bank and its hashes (matches already found keep the bank's name)."""
    bank = _bank(session, name)
    session.execute(delete(BankHash).where(BankHash.bank_id == bank.id))
    session.execute(update(ResultMatch).where(ResultMatch.bank_id == bank.id).values(bank_id=None))
    session.execute(delete(HashBank).where(HashBank.id == bank.id))


def bank_versions(session: Session) -> dict[int, int]:
    """The enabled banks' ids and versions: what a worker's indexes must match."""
    return {i: v for i, v in session.execute(select(HashBank.id, HashBank.version).where(HashBank.enabled.is_(True)))}


def bank_entries(session: Session, bank_id: int) -> tuple[BankInfo, list[str], list[str | None], list[str | None]]:
    """A bank and all its hashes, references and labels (what its index is built from)."""
    bank = session.get(HashBank, bank_id)
    if bank is None:
        raise BankNotFound(str(bank_id))
    rows = session.execute(select(BankHash.hash, BankHash.ref, BankHash.label)
                           .where(BankHash.bank_id == bank_id).order_by(BankHash.id)).all()
    hashes = [r[0] for r in rows]
    refs = [r[1] for r in rows]
    labels = [r[2] for r in rows]
    return _info(bank), hashes, refs, labels


def bank_webhooks(session: Session, bank_ids: Sequence[int]) -> dict[int, tuple[str, str, str]]:
    """Bank id -> (name, webhook URL, signing secret), for those of ``bank_ids`` that have a webhook."""
    if not bank_ids:
        return {}
    stmt = select(HashBank.id, HashBank.name, HashBank.webhook_url, HashBank.webhook_secret).where(
        HashBank.id.in_(list(bank_ids)), HashBank.webhook_url.is_not(None))
    return {i: (n, u, s) for i, n, u, s in session.execute(stmt) if u and s}


def replace_matches(session: Session, scan_id: int, rows: Sequence[ResultRow]) -> None:
    """Replace the matches of the rows' paths (a re-scored file may match otherwise): one delete, one insert."""
    keys = [path_hash(row.path) for row in rows if row.matches is not None]
    for start in range(0, len(keys), _IN_LIST_SIZE):
        session.execute(delete(ResultMatch).where(ResultMatch.scan_id == scan_id,
                                                  ResultMatch.path_hash.in_(keys[start : start + _IN_LIST_SIZE])))
    values = [{"scan_id": scan_id, "path": row.path, "path_hash": path_hash(row.path), "bank_id": m.bank_id,
               "bank": m.bank, "ref": m.ref, "label": m.label, "distance": m.distance, "frame": m.frame, "hash": m.hash}
              for row in rows for m in row.match_rows]
    if values:
        session.execute(insert(ResultMatch), values)
        add_notices(session, scan_id, rows)


def iter_matches(session: Session, *, scan_id: int, paths: Sequence[str] | None = None,
                 limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of the ``scan_matches`` view for a scan (or some of its paths), by path, distance, bank."""
    view = scan_matches.c
    stmt = view_select(scan_matches).where(view.scan_id == scan_id).order_by(view.path, view.distance, view.bank,
                                                                           view.ref)
    if limit is not None:
        stmt = stmt.limit(limit)
    if paths is None:
        return [dict(r) for r in session.execute(stmt).mappings()]
    return list(rows_of_paths(session, stmt, scan_matches, paths))


def match_count(session: Session, scan_id: int) -> int:
    return int(session.scalar(select(func.count()).select_from(ResultMatch).where(ResultMatch.scan_id == scan_id)) or 0)
