"""Near copies among a scan's PDQ hashes: pairs that share an eighth of the hash and differ in few bits.

Two hashes are candidates when one of their eight 32-bit eighths (8 hex digits at the same place) is equal,
as a multi-index hash finds them without comparing every pair: per eighth, the hashes are sorted by it and
each run of equal values pairs its members.  Only candidates have their distance computed (popcount of the
XOR of the 256 bits), and those within ``radius`` are kept.  Near copies a few bits apart nearly always keep an
eighth intact; copies 20-31 bits apart often do not, and are missed (a hash bank's matcher finds them).

A run longer than ``star`` (blank or uniform images all have the same hash) would give a number of pairs that
grows with its square: its members are paired with the run's first member only (its *centre*, the smallest
key when keys are given, else the first row), a star that keeps the group connected (chains of pairs are groups of near
copies) with one pair a member.

Plain numpy, no database: :mod:`dfscan.db.near_copies` reads a scan's hashes and stores the pairs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["RADIUS", "STAR", "near_pairs", "parse_hex", "parse_pdq"]

RADIUS = 31  # bits of 256: HMA's PDQ match distance
STAR = 256  # members of a run of equal eighths beyond which it is linked as a star

_HEX = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i


def parse_pdq(hexes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(n, 32) uint8 hash bytes of the well-formed hashes (64 hex digits), and the indexes they came from.

    Anything else (a truncated or non-hex value) is left out rather than failing the scan's end."""
    n = len(hexes)
    joined = "".join(hexes)
    if len(joined) == 64 * n:
        try:  # the common case: every value is 64 hex digits (whitespace, which fromhex skips, would fall short)
            raw = bytes.fromhex(joined)
            if len(raw) == 32 * n:
                return np.frombuffer(raw, np.uint8).reshape(n, 32).copy(), np.arange(n)
        except ValueError:
            pass
    keep = np.array([i for i, h in enumerate(hexes) if len(h) == 64], np.int64)
    text = "".join(hexes[i] for i in keep).encode("ascii", "replace")
    hashes, good = parse_hex(np.frombuffer(text, np.uint8).reshape(len(keep), 64))
    return hashes, keep[good]


def parse_hex(digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 64) ASCII hex digits (uint8) to (n, 32) bytes: those of the rows that are all hex, and their indexes."""
    values = _HEX[digits]
    good = np.flatnonzero((values != 255).all(axis=1))
    if len(good) < len(values):
        values = values[good]
    return (values[:, 0::2] << 4) | values[:, 1::2], good


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], np.uint8)  # pragma: no cover - numpy 1.x
    return table[x.view(np.uint8)].reshape(*x.shape, -1).sum(axis=-1)  # pragma: no cover


def _run_pairs(values: np.ndarray, star: int, keys: Any) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of row indexes with the same value: every pair within a run of up to ``star``, a star beyond."""
    # One sort of (value, row) in a 64-bit word: the rows of a run come out in row order (argsort is 4x slower).
    packed = np.sort((values.astype(np.uint64) << np.uint64(32)) | np.arange(len(values), dtype=np.uint64))
    order = (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
    s = packed >> np.uint64(32)
    same = s[1:] == s[:-1]
    if not same.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # Runs of length >= 2: [start, end) in sorted positions.
    edges = np.flatnonzero(np.diff(np.concatenate(([False], same, [False])).astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2] + 1
    lengths = ends - starts
    a_out: list[np.ndarray] = []
    b_out: list[np.ndarray] = []
    small = lengths <= star
    if small.any():
        # Positions inside small runs, with their run's end; pair each with the next d positions of its run.
        st, ln = starts[small], lengths[small]
        pos = np.repeat(st, ln) + (np.arange(ln.sum()) - np.repeat(np.cumsum(ln) - ln, ln))
        end = np.repeat(st + ln, ln)
        for d in range(1, int(ln.max())):
            ok = pos + d < end
            if not ok.any():
                break
            a_out.append(order[pos[ok]])
            b_out.append(order[pos[ok] + d])
            pos, end = pos[ok], end[ok]
    for st, en in zip(starts[~small], ends[~small]):
        members = order[st:en]
        centre = members[0] if keys is None else members[min(range(len(members)), key=lambda m: keys[members[m]])]
        others = members[members != centre]
        a_out.append(np.full(len(others), centre, np.int64))
        b_out.append(others.astype(np.int64))
    return np.concatenate(a_out).astype(np.int64), np.concatenate(b_out).astype(np.int64)


def near_pairs(hashes: np.ndarray, *, radius: int = RADIUS, star: int = STAR,
               keys: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each candidate pair within ``radius`` bits once: (i, j, distance) with i < j, sorted by (i, j).

    ``hashes``: (n, 32) uint8, as :func:`parse_pdq` gives.  ``keys`` (optional, a sequence of n values that
    compare, e.g. path hashes): which member of a large run is its centre (the smallest); by default the first
    row.  Rows are numbered below 2**32."""
    n = len(hashes)
    empty = np.zeros(0, np.int64)
    if n < 2:
        return empty, empty, empty
    h = np.ascontiguousarray(hashes, np.uint8)
    eighths = h.view(">u4").reshape(n, 8)
    found_a, found_b = [], []
    for k in range(8):
        a, b = _run_pairs(eighths[:, k], star, keys)
        found_a.append(a)
        found_b.append(b)
    a, b = np.concatenate(found_a), np.concatenate(found_b)
    if len(a) == 0:
        return empty, empty, empty
    pair = np.unique(np.minimum(a, b) * n + np.maximum(a, b))
    i, j = pair // n, pair % n
    words = h.view(np.uint64).reshape(n, 4)
    dist = _popcount(words[i] ^ words[j]).sum(axis=1, dtype=np.int64)
    keep = dist <= radius
    return i[keep], j[keep], dist[keep]
