"""The match stage: every hash of a batch against every enabled bank, before the model.

Each worker keeps one :class:`~dfscan.workers.hashing.Matcher` (a faiss
index per bank, built once) and asks the database, once per batch, for the
enabled banks' versions: a bank that was imported into, enabled or disabled
since is rebuilt, a dropped or disabled one forgotten.  An image's PDQ (and,
with dihedral hashes on, its seven rotations and mirrors) is matched within
each bank's distance, a video's distinct frames likewise (each match says its
frame), and every file's SHA-256 and MD5 against the exact banks of that kind
(the SHA-256 the image stage took for copies; a file's bytes are read again,
in chunks, only for a digest it lacks while such a bank is enabled).  A hash of
quality under 50 is kept on the row but not matched, and its row says so.
A batch without a job (no scan) is not matched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from dfscan import db
from dfscan.db import banks
from dfscan.db.records import MatchRow
from dfscan.workers.hashing import BankData, Found, Matcher, PdqHash, nearest_per_entry
from dfscan.workers.reading import ImageError, file_digests
from dfscan.workers.scoring.hashes import Hashed
from dfscan.workers.scoring.stages import Batch, Item

if TYPE_CHECKING:
    from dfscan.workers.scoring.context import Resources
    from dfscan.workers.scoring.stages import Job

EXACT_KINDS = ("sha256", "md5")  # hashlib names, as exact banks are kinds

__all__ = ["EXACT_KINDS", "MatchStage", "bank_matcher", "match_file", "match_stage"]


class MatchStage:
    name = "match"
    phase = "score"

    def __init__(self, db_url: str, retry_seconds: float = 120.0, store=None) -> None:
        self.db_url = db_url
        self.store = store  # reads s3:// objects for their exact digests
        self.retry_seconds = retry_seconds
        self._engine = None
        self._sessions = None
        self._lock = threading.Lock()
        self.matcher = bank_matcher(self._session, retry_seconds)

    def _session(self) -> Session:
        if self._sessions is None:
            self._engine = db.make_engine(self.db_url)
            self._sessions = db.session_factory(self._engine)
        return self._sessions()

    def cost(self, path: str) -> int | None:
        return None

    def run(self, batch: Batch, job: "Job | None" = None) -> None:
        if job is None:
            return
        with self._lock:  # scans sharing this stage (dfscan serve) share its indexes
            self.matcher.refresh()
            if not self.matcher.indexes:
                return
            for item in batch.items:
                if item.copy_of is None:
                    self._match(item, job.roots)

    def _exact(self, item: Item, roots: tuple[str, ...] | None) -> dict[str, str]:
        """The file's digests of the kinds an enabled exact bank holds (none for a file that can't be read)."""
        known = {"sha256": item.content_hash} if item.content_hash else {}
        missing = [kind for kind in EXACT_KINDS if kind in self.matcher.kinds() and kind not in known]
        if missing and item.error is None:
            try:
                known.update(file_digests(item.path, missing, store=self.store, roots=roots))
            except ImageError:
                pass  # the row already says why the file can't be read, or it was scored from what was read
        return known

    def _match(self, item: Item, roots: tuple[str, ...] | None) -> None:
        hashed = item.hashes
        exact = self._exact(item, roots)
        looked, found = match_file(self.matcher, hashed.image if hashed is not None else None, exact)
        pairs: list[tuple[Found, int | None]] = [(f, None) for f in found]
        if hashed is not None and hashed.frames and "pdq" in self.matcher.kinds():
            frames = [(i, h) for i, h in hashed.unique_frames() if h.matchable]
            looked = looked or bool(frames)
            pairs += _nearest_frame(frames, self.matcher.match("pdq", [h.hex for _, h in frames]))
        if not looked:
            return
        if hashed is None:
            hashed = item.hashes = Hashed()
        hashed.matched = True
        hashed.match_rows = [MatchRow(f.bank_id, f.bank, f.ref, f.label, f.distance, f.hash, frame)
                             for f, frame in pairs]

    def record(self) -> dict | None:
        return None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def match_file(matcher: Matcher, image: PdqHash | None, exact: dict[str, str]) -> tuple[bool, list[Found]]:
    """One file's matches: its PDQ (and dihedral variants) and its exact hashes (kind -> hex) against the banks.

    The first value says whether anything was matched at all: a PDQ of quality under 50 is not, and a kind
    without an enabled bank is not.
    """
    kinds = matcher.kinds()
    looked, found = False, []
    for kind, value in exact.items():
        if kind in kinds:
            looked = True
            found += matcher.match(kind, [value])[0]
    if image is not None and image.matchable and "pdq" in kinds:
        looked = True
        found += nearest_per_entry([f for per in matcher.match("pdq", image.all()) for f in per])
    return looked, found


def _nearest_frame(frames: list, per_frame: list[list[Found]]) -> list[tuple[Found, int | None]]:
    """A video's matches: each bank entry once, at the frame nearest to it."""
    best: dict[tuple[int, str], tuple[Found, int | None]] = {}
    for (index, _h), found in zip(frames, per_frame):
        for f in found:
            key = (f.bank_id, f.hash)
            if key not in best or f.distance < best[key][0].distance:
                best[key] = (f, index)
    return sorted(best.values(), key=lambda x: (x[0].distance, x[0].bank))


def bank_matcher(open_session: Callable[[], Session], retry_seconds: float = 120.0) -> Matcher:
    """A :class:`Matcher` of the enabled banks of the database ``open_session`` reaches (reads retried with back-off)."""

    def versions() -> dict[int, int]:
        def read() -> dict[int, int]:
            with open_session() as session:
                return banks.bank_versions(session)

        return db.retry_db(read, deadline_s=retry_seconds, what="reading the hash banks")

    def load(bank_id: int) -> BankData:
        def read() -> BankData:
            with open_session() as session:
                info, hashes, refs, labels = banks.bank_entries(session, bank_id)
            return BankData(info.id, info.name, info.kind, info.distance, info.version, hashes, refs, labels)

        return db.retry_db(read, deadline_s=retry_seconds, what=f"loading hash bank {bank_id}")

    return Matcher(versions, load)


def match_stage(res: "Resources") -> MatchStage | None:
    return MatchStage(res.settings.db_url, res.settings.db_retry_seconds, store=res.store)
