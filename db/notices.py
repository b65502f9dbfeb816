"""Notices of matched files: one POST per matched file to its scan's callback and to each matched bank's webhook.

:func:`add_notices` runs where a batch's matches are written (:func:`dfscan.db.banks.replace_matches`):
a file with matches gets a notice for its scan's callback (a scan started
through `dfscan serve` with a callback URL) and one per matched bank that has
a webhook; ``(scan_id, path_hash, target)`` is unique, so a file scored again is
not announced again.  `dfscan serve` delivers them as it delivers scan
callbacks (:mod:`dfscan.serve.match_notices`): claimed by one server (a lease
on ``next_attempt_at``), signed with the key's or the bank's secret, retried
with back-off, given up after the callbacks' attempts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import String, cast, literal, select, update
from sqlalchemy.orm import Session

from ._dialects import insert_for
from ._types import utcnow
from .models import ApiKey, HashBank, MatchNotice, ResultMatch, ScanCallback
from .paths import path_hash
from .records import ResultRow

__all__ = ["DueNotice", "add_notices", "claim_notice", "due_notices", "notice_matches", "record_notice_attempt"]

SCAN_TARGET = "scan"


@dataclass(frozen=True)
class DueNotice:
    id: int
    scan_id: int
    path: str
    target: str  # "scan" or "bank:ID"
    url: str
    secret: str
    attempts: int

    @property
    def bank_id(self) -> int | None:
        return int(self.target.split(":", 1)[1]) if self.target.startswith("bank:") else None


def add_notices(session: Session, scan_id: int, rows: Sequence[ResultRow]) -> int:
    """Notices for the matched files among ``rows`` (none already made for a file and target); how many targets."""
    matched = [row for row in rows if row.match_rows]
    if not matched:
        return 0
    has_callback = session.scalar(select(ScanCallback.scan_id).where(ScanCallback.scan_id == scan_id)) is not None
    bank_ids = {m.bank_id for row in matched for m in row.match_rows if m.bank_id is not None}
    hooked = set(session.scalars(select(HashBank.id).where(HashBank.id.in_(bank_ids),
                                                          HashBank.webhook_url.is_not(None)))) if bank_ids else set()
    values = []
    for row in matched:
        targets = [SCAN_TARGET] if has_callback else []
        targets += [f"bank:{b}" for b in sorted({m.bank_id for m in row.match_rows} & hooked)]  # type: ignore[misc]
        key = path_hash(row.path)
        values += [{"scan_id": scan_id, "path": row.path, "path_hash": key, "target": t, "attempts": 0}
                   for t in targets]
    if values:
        session.execute(insert_for(session)(MatchNotice).on_conflict_do_nothing(
            index_elements=["scan_id", "path_hash", "target"]), values)
    return len(values)


def due_notices(session: Session, *, max_attempts: int, limit: int = 50) -> list[DueNotice]:
    """Notices neither delivered nor given up whose next try is due, with where they go and what signs them."""
    now = utcnow()
    pending = (MatchNotice.delivered_at.is_(None), MatchNotice.given_up_at.is_(None),
               MatchNotice.attempts < max_attempts,
               (MatchNotice.next_attempt_at.is_(None)) | (MatchNotice.next_attempt_at <= now))
    to_scans = session.execute(
        select(MatchNotice.id, MatchNotice.scan_id, MatchNotice.path, MatchNotice.target, ScanCallback.url,
               ApiKey.signing_secret, MatchNotice.attempts)
        .join(ScanCallback, ScanCallback.scan_id == MatchNotice.scan_id)
        .join(ApiKey, ApiKey.id == ScanCallback.api_key_id)
        .where(MatchNotice.target == SCAN_TARGET, ApiKey.revoked_at.is_(None), *pending)
        .order_by(MatchNotice.id).limit(limit)).all()
    to_banks = session.execute(
        select(MatchNotice.id, MatchNotice.scan_id, MatchNotice.path, MatchNotice.target, HashBank.webhook_url,
               HashBank.webhook_secret, MatchNotice.attempts)
        .join(HashBank, MatchNotice.target == literal("bank:").concat(cast(HashBank.id, String)))
        .where(HashBank.webhook_url.is_not(None), *pending)
        .order_by(MatchNotice.id).limit(limit)).all()
    return [DueNotice(*r) for r in [*to_scans, *to_banks]]


def claim_notice(session: Session, notice_id: int, lease_s: float) -> bool:
    """Take a due notice for ``lease_s`` (another server then skips it); False if another took it first."""
    now = utcnow()
    taken = session.execute(
        update(MatchNotice)
        .where(MatchNotice.id == notice_id, MatchNotice.delivered_at.is_(None), MatchNotice.given_up_at.is_(None),
               (MatchNotice.next_attempt_at.is_(None)) | (MatchNotice.next_attempt_at <= now))
        .values(next_attempt_at=now + timedelta(seconds=lease_s)))
    return taken.rowcount == 1  # type: ignore[attr-defined]


def record_notice_attempt(session: Session, notice_id: int, *, error: str | None, max_attempts: int,
                          backoff_s: float) -> None:
    notice = session.get(MatchNotice, notice_id)
    if notice is None:
        return
    now = utcnow()
    notice.attempts += 1
    notice.last_error = error
    if error is None:
        notice.delivered_at = now
    elif notice.attempts >= max_attempts:
        notice.given_up_at = now
    else:
        notice.next_attempt_at = now + timedelta(seconds=backoff_s)


def notice_matches(session: Session, notice: DueNotice) -> list[dict]:
    """The matches a notice announces: every match of its file (a bank's webhook: that bank's only)."""
    stmt = select(ResultMatch.bank, ResultMatch.ref, ResultMatch.label, ResultMatch.distance, ResultMatch.frame).where(
        ResultMatch.scan_id == notice.scan_id, ResultMatch.path_hash == path_hash(notice.path))
    if notice.bank_id is not None:
        stmt = stmt.where(ResultMatch.bank_id == notice.bank_id)
    return [dict(r) for r in session.execute(stmt.order_by(ResultMatch.distance, ResultMatch.bank)).mappings()]
