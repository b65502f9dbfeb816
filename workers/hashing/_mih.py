"""Multi-index hashing of 256-bit hashes (Norouzi et al.), compiled with numba: exact range search, sub-linear.

The 256 bits are cut into 16 substrings of 16 bits.  Two hashes within 31
bits of each other differ in at most one bit of at least one substring
(pigeonhole: 16 substrings with two or more differing bits would be 32 bits),
so probing each table with the query's substring and its 16 one-bit flips
finds every entry within 31 bits: recall 1.0, as an exhaustive scan.  Each
table keeps its entries sorted by its substring, with two further 64-bit
words of each entry beside it: a candidate is rejected on those 128 bits
(a random entry differs in ~64 of them) before its whole hash is read, so the
scan of a bucket is sequential memory.  Tables are walked one at a time for
the whole batch of queries, and each table's probes are visited in bucket
order (a counting sort of the batch's 17 probes per query): the walk through
a table's 16 MB of side words goes one way, which the caches and the
prefetcher follow.  One thread; the scan's other threads are the model's.

faiss's own multi-index hashing (``IndexBinaryMultiHash``, 16 x 16 bits, one
flip) gave 455 lookups/s on one core against a million random hashes on the
machine this was written on, this 60,000 (batches of 10,000): faiss's
per-query hash maps and sets cost more than the distances.  Memory: about 350 bytes per entry (16 tables
of 16-byte side words and 4-byte ids, the hashes themselves).
"""

from __future__ import annotations

import numpy as np

__all__ = ["MultiIndex", "max_radius"]

_TABLES = 16
_CAP = 64  # matches kept per query in one pass; a query with more is answered by a full scan


def max_radius() -> int:
    """The largest distance one flip per 16-bit substring guarantees to find."""
    return 2 * _TABLES - 1


def _kernel():
    from numba import njit

    @njit(cache=True, inline="always")
    def popcount(x):
        x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
        x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
        x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
        return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)

    @njit(cache=True)
    def sorted_probes(qkeys, j, hist, probe_q, probe_k):  # pragma: no cover
        """Every query's 17 probes of table ``j`` in ascending bucket order (a counting sort on the 16-bit key)."""
        hist[:] = 0
        for qi in range(qkeys.shape[0]):
            for f in range(17):
                k = qkeys[qi, j] if f == 0 else qkeys[qi, j] ^ (1 << (f - 1))
                hist[k + 1] += 1
        for k in range(65536):
            hist[k + 1] += hist[k]
        for qi in range(qkeys.shape[0]):
            for f in range(17):
                k = qkeys[qi, j] if f == 0 else qkeys[qi, j] ^ (1 << (f - 1))
                probe_q[hist[k]] = qi
                probe_k[hist[k]] = k
                hist[k] += 1

    @njit(cache=True)
    def search(qkeys, qwords, order, starts, side, words, radius, out_ids, out_d, out_n):  # pragma: no cover
        queries, tables, cap = qkeys.shape[0], qkeys.shape[1], out_ids.shape[1]
        hist = np.zeros(65537, np.int64)
        probe_q = np.empty(queries * 17, np.int32)
        probe_k = np.empty(queries * 17, np.int32)
        out_n[:] = 0
        for j in range(tables):
            w = j // 4
            sorted_probes(qkeys, j, hist, probe_q, probe_k)
            for i in range(queries * 17):
                qi, k = probe_q[i], probe_k[i]
                a, b = qwords[qi, (w + 1) % 4], qwords[qi, (w + 2) % 4]
                n = out_n[qi]
                for p in range(starts[j, k], starts[j, k + 1]):
                    if popcount(side[j, p, 0] ^ a) + popcount(side[j, p, 1] ^ b) > radius:
                        continue
                    c = order[j, p]
                    d = 0
                    for ww in range(4):
                        d += popcount(words[c, ww] ^ qwords[qi, ww])
                    if d > radius:
                        continue
                    seen = False
                    for m in range(min(n, cap)):
                        if out_ids[qi, m] == c:
                            seen = True
                    if not seen:
                        if n < cap:
                            out_ids[qi, n] = c
                            out_d[qi, n] = d
                        n += 1
                out_n[qi] = n

    return search


_SEARCH = None


class MultiIndex:
    """Exact range search within at most 31 bits over ``vectors`` ((n, 32) uint8, the hashes' bytes)."""

    def __init__(self, vectors: np.ndarray) -> None:
        global _SEARCH
        if _SEARCH is None:
            _SEARCH = _kernel()
        vectors = np.ascontiguousarray(vectors, dtype=np.uint8)
        n = len(vectors)
        self.words = vectors.view(np.uint64).reshape(n, 4).copy()
        keys = vectors.view(">u2").reshape(n, _TABLES)
        self.order = np.empty((_TABLES, n), np.int32)
        self.starts = np.empty((_TABLES, 65537), np.int32)
        self.side = np.empty((_TABLES, n, 2), np.uint64)
        for j in range(_TABLES):
            order = np.argsort(keys[:, j], kind="stable").astype(np.int32)
            self.order[j] = order
            self.starts[j] = np.searchsorted(keys[order, j], np.arange(65537))
            w = j // 4
            self.side[j] = self.words[order][:, [(w + 1) % 4, (w + 2) % 4]]

    def __len__(self) -> int:
        return len(self.words)

    def range_search(self, queries: np.ndarray, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each query, the ids and distances of the entries within ``radius`` bits (at most 31)."""
        if radius > max_radius():
            raise ValueError(f"multi-index hashing here finds matches within {max_radius()} bits, not {radius}")
        queries = np.ascontiguousarray(queries, dtype=np.uint8)
        q = len(queries)
        qwords = queries.view(np.uint64).reshape(q, 4).copy()
        qkeys = queries.view(">u2").reshape(q, _TABLES).astype(np.int64)
        ids = np.empty((q, _CAP), np.int32)
        dists = np.empty((q, _CAP), np.int32)
        counts = np.empty(q, np.int32)
        assert _SEARCH is not None
        _SEARCH(qkeys, qwords, self.order, self.starts, self.side, self.words, radius, ids, dists, counts)
        out = []
        for i in range(q):
            if counts[i] > _CAP:  # more matches than one pass keeps: scan every entry for this query
                d = np.bitwise_count(self.words ^ qwords[i]).sum(axis=1)
                hit = np.flatnonzero(d <= radius)
                out.append((hit.astype(np.int64), d[hit].astype(np.int64)))
            else:
                out.append((ids[i, : counts[i]].astype(np.int64), dists[i, : counts[i]].astype(np.int64)))
        return out
