"""Each distinct image scored once: content hashes, and rows for files whose bytes were already scored.

Three levels, cheapest first:

* in a batch, :class:`workers.scoring.images.ImageStage` hashes each file's bytes as
  it reads them (SHA-256: about twice BLAKE2b's speed on CPUs with the SHA
  extensions, measured here) and decodes one file per hash; the others are
  copies (``Item.copy_of``) and take its row, errors included;
* across batches and chunks of a scan, :class:`KnownStage` asks the database
  (through the loop's ``Job.lookup``), once per batch and before inference,
  for rows of this scan with the batch's hashes (:func:`db.known_verdicts`);
  those files are not scored again;
* with ``--reuse-verdicts``, an ``ok`` row of an earlier scan with the same
  model and hash is taken too, its label re-decided at this scan's threshold.

Rows say which (``verdict_source``: ``computed``, ``copy``, ``reused``).  Two
fleet workers that meet the same new content at the same moment both score it:
the lookup sees committed rows only.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from dfscan.db.content import CONTENT_ERRORS, KnownVerdict
from dfscan.db.records import ResultRow
from dfscan.workers.reading import ImageError

if TYPE_CHECKING:
    from dfscan.workers.scoring.stages import Batch, Item
    from dfscan.workers.scoring.stages import Job
    from dfscan.workers.scoring.verdict import Verdict

__all__ = ["KnownStage", "content_hash", "relabel", "remember"]


def content_hash(data: bytes) -> str:
    """The hex SHA-256 of a file's bytes (hashlib releases the GIL: the read threads hash in parallel)."""
    return hashlib.sha256(data).hexdigest()


class KnownStage:
    """Before inference: items whose bytes already have a row (one lookup per batch) take it, unscored."""

    name = "known"
    phase = "score"

    def __init__(self, aggregation: str = "max") -> None:
        self.aggregation = aggregation  # how a reused row's faces make its verdict

    def cost(self, path: str) -> int | None:
        return None

    def run(self, batch: "Batch", job: "Job | None" = None) -> None:
        if job is None or job.lookup is None:
            return
        hashes = [h for h in dict.fromkeys(item.content_hash for item in batch.items) if h]
        known = job.lookup(hashes) if hashes else {}
        if not known:
            return
        now = datetime.now(timezone.utc)
        for item in batch.items:
            if item.content_hash in known:
                item.row = self._from_known(known[item.content_hash], item, job, now)

    def _from_known(self, known: KnownVerdict, item: "Item", job: "Job", now: datetime) -> ResultRow:
        """An in-batch copy is a ``copy`` of the one that is ``reused`` from an earlier scan."""
        row, copy = known.row, item.copy_of is not None
        if known.scan_id != job.scan_id:
            return relabel(row, job.verdict, self.aggregation).copied_to(
                item.path, item.size, item.mtime, source="copy" if copy else "reused", scanned_at=now, etag=item.etag)
        if row.path == item.path:  # a redelivered batch meets its own row: write it back as it is
            return row
        return row.copied_to(item.path, item.size, item.mtime, source="copy", scanned_at=now, etag=item.etag)

    def record(self) -> dict | None:
        return None

    def close(self) -> None:
        pass


def relabel(row: ResultRow, verdict: "Verdict", aggregation: str = "max") -> ResultRow:
    """An earlier scan's ``ok`` row decided again by ``verdict``: its probabilities stay, its labels follow.

    With faces, each face's label, and the image's p_fake from its faces by ``aggregation``.
    """
    if row.status != "ok" or row.p_fake is None:
        return row
    faces = row.face_rows
    if faces:
        faces = tuple(replace(f, label=_valid(verdict.decision(f.p_fake)).label) for f in faces)
        image = _valid(verdict.aggregate([f.p_fake for f in faces], aggregation))
        return replace(row, label=image.label, p_fake=image.p_fake, confidence=image.confidence, face_rows=faces)
    d = _valid(verdict.decision(row.p_fake))
    return replace(row, label=d.label, confidence=d.confidence)


def _valid(d):
    """A stored ``ok`` row's p_fake passed the check when it was scored: deciding it again can't fail."""
    assert not isinstance(d, ImageError), d.message
    return d


def remember(known: dict[str, KnownVerdict], rows: list[ResultRow], scan_id: int) -> None:
    """Add to ``known`` the rows (of scan ``scan_id``) that copies may take, as :func:`db.known_verdicts` would find them."""
    for row in rows:
        if row.content_hash and row.content_hash not in known and (
            row.status in ("ok", "no-face") or row.error_code in CONTENT_ERRORS
        ):
            known[row.content_hash] = KnownVerdict(scan_id, row)
