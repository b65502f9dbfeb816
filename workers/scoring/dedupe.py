"""Each distinct image scored once: content hashes, and rows for files whose bytes were already scored.

Three levels, cheapest first:

* in a batch, :class:`workers.batches.BatchMaker` hashes each file's bytes as
  it reads them (SHA-256: about twice BLAKE2b's speed on CPUs with the SHA
  extensions, measured here) and decodes one file per hash; the others are
  copies (``PreparedBatch.copy_of``) and take its row, errors included;
* across batches and chunks of a scan, the pipeline asks the database, once
  per batch and before inference, for rows of this scan with the batch's
  hashes (:func:`db.known_verdicts`); those files are not scored again;
* with ``--reuse-verdicts``, an ``ok`` row of an earlier scan with the same
  model and hash is taken too, its label re-decided at this scan's threshold.

Rows say which (``verdict_source``: ``computed``, ``copy``, ``reused``).  Two
fleet workers that meet the same new content at the same moment both score it:
the lookup sees committed rows only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from dfscan.db.content import CONTENT_ERRORS, KnownVerdict
from dfscan.db.records import ResultRow
from dfscan.workers.scoring.face_stage import image_verdict

if TYPE_CHECKING:
    from dfscan.workers.scoring.batches import PreparedBatch, Verdict

__all__ = ["Plan", "content_hash", "plan", "relabel", "remember"]


def content_hash(data: bytes) -> str:
    """The hex SHA-256 of a file's bytes (hashlib releases the GIL: the read threads hash in parallel)."""
    return hashlib.sha256(data).hexdigest()


class Plan:
    """What of a batch must be scored (:attr:`todo`) and how its rows and the known ones make the batch's rows."""

    def __init__(self, prepared: "PreparedBatch", known: dict[str, KnownVerdict], scan_id: int,
                 relabel_known: Callable[[ResultRow], ResultRow]) -> None:
        self.prepared = prepared
        self.known = known
        self.scan_id = scan_id
        self._relabel = relabel_known
        hashes = prepared.hashes
        self.compute = [i for i in range(len(prepared.paths)) if not (hashes and hashes[i] in known)]
        self.todo = prepared if len(self.compute) == len(prepared.paths) else prepared.subset(self.compute)

    def rows(self, scored: list[ResultRow]) -> list[ResultRow]:
        """Every path's row, in order: ``scored`` (the rows of :attr:`todo`) and copies of known verdicts."""
        if self.todo is self.prepared:
            return scored
        mine = dict(zip(self.compute, scored))
        now = datetime.now(timezone.utc)
        p = self.prepared
        out = []
        for i, path in enumerate(p.paths):
            row = mine.get(i)
            if row is None:
                row = self._from_known(self.known[p.hashes[i]], path, p.sizes[i], p.mtimes[i], now,
                                       copy=i in p.copy_of, etag=p.etag(i))
            out.append(row)
        return out

    def _from_known(self, known: KnownVerdict, path: str, size: int | None, mtime: float | None,
                    now: datetime, copy: bool, etag: str | None = None) -> ResultRow:
        """``copy``: an earlier file of this batch has the bytes (it is the one ``reused``, this a ``copy``)."""
        row = known.row
        if known.scan_id != self.scan_id:
            return self._relabel(row).copied_to(path, size, mtime, source="copy" if copy else "reused",
                                                scanned_at=now, etag=etag)
        if row.path == path:  # a redelivered batch meets its own row: write it back as it is
            return row
        return row.copied_to(path, size, mtime, source="copy", scanned_at=now, etag=etag)


def plan(prepared: "PreparedBatch", lookup: Callable[[list[str]], dict[str, KnownVerdict]], scan_id: int,
         verdict: "Verdict", aggregation: str = "max") -> Plan:
    """The batch's :class:`Plan`: ``lookup(hashes)`` gives the known rows (one query), skipped without hashes."""
    hashes = [h for h in dict.fromkeys(prepared.hashes) if h]
    known = lookup(hashes) if hashes else {}
    return Plan(prepared, known, scan_id, lambda row: relabel(row, verdict.threshold, aggregation))


def relabel(row: ResultRow, threshold: float, aggregation: str = "max") -> ResultRow:
    """An earlier scan's ``ok`` row decided again at ``threshold``: its probabilities stay, its labels follow.

    With faces, each face's label, and the image's p_fake from its faces by ``aggregation``
    (what :func:`workers.faces.image_verdict` does).
    """
    if row.status != "ok" or row.p_fake is None:
        return row
    faces = row.face_rows
    if faces:
        faces = tuple(replace(f, label=_label(f.p_fake, threshold)) for f in faces)
        label, p_fake, confidence = image_verdict([f.p_fake for f in faces], aggregation, threshold)
        return replace(row, label=label, p_fake=p_fake, confidence=confidence, face_rows=faces)
    label = _label(row.p_fake, threshold)
    return replace(row, label=label, confidence=row.p_fake if label == "fake" else 1.0 - row.p_fake)


def _label(p_fake: float, threshold: float) -> str:
    return "fake" if p_fake >= threshold else "real"



def remember(known: dict[str, KnownVerdict], rows: list[ResultRow], scan_id: int) -> None:
    """Add to ``known`` the rows (of scan ``scan_id``) that copies may take, as :func:`db.known_verdicts` would find them."""
    for row in rows:
        if row.content_hash and row.content_hash not in known and (
            row.status in ("ok", "no-face") or row.error_code in CONTENT_ERRORS
        ):
            known[row.content_hash] = KnownVerdict(scan_id, row)
