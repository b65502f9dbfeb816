"""Matching hashes against banks: faiss binary indexes for PDQ, sets for exact hashes.

One :class:`BankIndex` per bank, built once from the bank's hashes and kept
until the bank changes (:class:`Matcher` compares each bank's version).  A PDQ
bank of up to :data:`FLAT_MAX` hashes is searched exhaustively with faiss
(``IndexBinaryFlat``: exact, and fast at that size), as is a bank whose
distance is over 31; a larger one through multi-index hashing
(:class:`~dfscan.workers.hashing._mih.MultiIndex`: 16 substrings of 16 bits,
so a hash within 31 bits shares one substring within one flipped bit), which
finds every match the exhaustive search finds, 60 times faster than faiss's
``IndexBinaryMultiHash`` on a million hashes here.  MD5 and SHA-256 banks are
exact: a dict lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ._mih import MultiIndex, max_radius
from .pdq import hash_bytes

__all__ = ["FLAT_MAX", "BankData", "BankIndex", "Found", "Matcher", "nearest_per_entry"]

FLAT_MAX = 50_000


@dataclass(frozen=True)
class BankData:
    """What a bank holds, as its index needs it: hashes (hex) with their references and labels."""

    bank_id: int
    name: str
    kind: str  # "pdq", "md5" or "sha256"
    distance: int
    version: int
    hashes: list[str]
    refs: list[str | None]
    labels: list[str | None]


@dataclass(frozen=True)
class Found:
    """One match: the bank, the bank entry's reference and label, the distance (0 for exact banks)."""

    bank_id: int
    bank: str
    ref: str | None
    label: str | None
    distance: int
    hash: str


@dataclass
class BankIndex:
    data: BankData
    index: object = None  # PDQ banks: a faiss IndexBinaryFlat or a MultiIndex
    exact: dict[str, int] = field(default_factory=dict)  # hash -> entry (exact banks)

    @classmethod
    def build(cls, data: BankData) -> "BankIndex":
        if data.kind != "pdq":
            return cls(data, exact={h: i for i, h in enumerate(data.hashes)})
        import faiss

        vectors = hash_bytes(data.hashes)
        if len(data.hashes) > FLAT_MAX and data.distance <= max_radius():
            return cls(data, MultiIndex(vectors))
        index = faiss.IndexBinaryFlat(256)
        if len(vectors):
            index.add(vectors)
        return cls(data, index)

    def search(self, hexes: Sequence[str]) -> list[list[Found]]:
        """For each query, every entry within the bank's distance (PDQ) or equal to it (exact), nearest first."""
        out: list[list[Found]] = [[] for _ in hexes]
        d = self.data
        if not hexes or not d.hashes:
            return out
        if self.index is None:
            for q, h in enumerate(hexes):
                i = self.exact.get(h)
                if i is not None:
                    out[q].append(Found(d.bank_id, d.name, d.refs[i], d.labels[i], 0, h))
            return out
        queries = hash_bytes(list(hexes))
        if isinstance(self.index, MultiIndex):
            per_query = [(dists, ids) for ids, dists in self.index.range_search(queries, d.distance)]
        else:
            # faiss's binary range search keeps distances strictly under the radius.
            lims, dists, ids = self.index.range_search(queries, d.distance + 1)  # type: ignore[attr-defined]
            per_query = [(dists[lims[q]:lims[q + 1]], ids[lims[q]:lims[q + 1]]) for q in range(len(hexes))]
        for q, (dists, ids) in enumerate(per_query):
            hits = sorted(zip(dists.tolist(), ids.tolist()))
            out[q] = [Found(d.bank_id, d.name, d.refs[i], d.labels[i], int(dist), d.hashes[i]) for dist, i in hits]
        return out


class Matcher:
    """Every enabled bank's index, rebuilt for a bank whose version changed (``refresh``)."""

    def __init__(self, versions: Callable[[], dict[int, int]], load: Callable[[int], BankData]) -> None:
        self._versions = versions  # bank id -> version, of the enabled banks
        self._load = load
        self.indexes: dict[int, BankIndex] = {}

    def refresh(self) -> None:
        wanted = self._versions()
        for bank_id in list(self.indexes):
            if bank_id not in wanted:
                del self.indexes[bank_id]
        for bank_id, version in wanted.items():
            have = self.indexes.get(bank_id)
            if have is None or have.data.version != version:
                self.indexes[bank_id] = BankIndex.build(self._load(bank_id))

    def kinds(self) -> set[str]:
        """The kinds of hash the enabled banks hold."""
        return {index.data.kind for index in self.indexes.values()}

    def match(self, kind: str, hexes: Sequence[str]) -> list[list[Found]]:
        """Each of ``hexes`` (hashes of ``kind``) against every enabled bank of that kind."""
        out: list[list[Found]] = [[] for _ in hexes]
        for index in self.indexes.values():
            if index.data.kind == kind:
                for q, found in enumerate(index.search(hexes)):
                    out[q].extend(found)
        return out


def nearest_per_entry(found: list[Found]) -> list[Found]:
    """One match per bank entry (the nearest), as the dihedral variants of one image may each find it."""
    best: dict[tuple[int, str], Found] = {}
    for f in found:
        key = (f.bank_id, f.hash)
        if key not in best or f.distance < best[key].distance:
            best[key] = f
    return sorted(best.values(), key=lambda f: (f.distance, f.bank, f.ref or ""))

