"""``dfscan bench``'s hash rows: PDQ per image beside the classifier, and matching against a large bank.

* ``hash pdq``: PDQ of the decoded tensors as the scan's hash stage computes
  it (pixels back from the tensor, then PDQ), in the same run as the
  ``infer`` rows; the report gives its time per image as a share of the
  classifier's (goal: under 5% on CPU).
* ``match bank of N`` (``--bank N``): N random PDQ hashes plus planted near
  copies of some of them (1 to 31 bits flipped), indexed as a worker indexes a
  bank (:class:`dfscan.workers.hashing.BankIndex`: multi-index hashing past
  :data:`~dfscan.workers.hashing.FLAT_MAX`); lookups/s of the copies among
  unrelated hashes (batches of :data:`QUERY_BATCH`), and the recall of the
  copies (goal: 20,000 lookups/s on 2 cores with recall 1.0 at distance 31).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from dfscan.bench import stages
from dfscan.bench.records import Row

__all__ = ["PLANTED", "bank_row", "format_hashes", "pdq_row"]

PLANTED = 1000
QUERY_BATCH = 10_000  # lookups per call: the planted copies and unrelated random hashes


def pdq_row(tensors: np.ndarray, pre, min_seconds: float, infer: Row | None) -> Row:
    """PDQ of every tensor, as the hash stage computes it; details: its share of the classifier's time per image."""
    from dfscan.workers.hashing import pdq
    from dfscan.workers.scoring.hashes import pixels_of_tensor

    def run() -> int:
        for t in tensors:
            pdq(pixels_of_tensor(t, pre))
        return len(tensors)

    t = stages.timed(run, min_seconds, warmup=lambda: pdq(pixels_of_tensor(tensors[0], pre)))
    details: dict[str, Any] = {"input": f"{tensors.shape[2]}x{tensors.shape[3]} decoded tensors"}
    if infer is not None and infer.status == "ok" and infer.images_per_s > 0:
        details["classifier"] = infer.key
        details["share_of_classifier"] = infer.images_per_s / t.images_per_s
    return Row("hash", "pdq", "ok", t.images, t.seconds, t.images_per_s, t.peak_rss_mib, t.start_rss_mib, t.repeats,
               details=details)


def _planted_bank(size: int, seed: int) -> tuple[list[str], list[str], list[int]]:
    from dfscan.workers.hashing import hash_bytes

    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (size, 32), dtype=np.uint8)
    bank = bytes(raw).hex()
    hexes = [bank[i * 64:(i + 1) * 64] for i in range(size)]
    chosen = rng.choice(size, min(PLANTED, size), replace=False)
    copies = []
    for k, i in enumerate(chosen):
        bits = np.unpackbits(hash_bytes([hexes[i]])[0])
        bits[rng.choice(256, 1 + k % 31, replace=False)] ^= 1
        copies.append(np.packbits(bits).tobytes().hex())
    return hexes, copies, [int(i) for i in chosen]


def bank_row(size: int, threads: int = 2, seed: int = 25) -> Row:
    """Lookups against a bank of ``size`` random hashes with planted near copies; recall of the copies."""
    import faiss

    from dfscan.workers.hashing import BankData, BankIndex

    hexes, copies, truth = _planted_bank(size, seed)
    started = time.perf_counter()
    index = BankIndex.build(BankData(1, "bench", "pdq", 31, 1, hexes, [None] * size, [None] * size))
    built = time.perf_counter() - started
    unrelated = _planted_bank(QUERY_BATCH - len(copies), seed + 1)[0]
    queries = copies + unrelated
    faiss.omp_set_num_threads(threads)  # the flat index's (a multi-index search is one thread)
    t = stages.timed(lambda: len(index.search(queries)), 1.0, warmup=lambda: index.search(queries[:8]))
    found = index.search(copies)
    recalled = sum(any(f.hash == hexes[i] for f in hits) for i, hits in zip(truth, found))
    details = {"bank": size, "planted": len(copies), "recall": recalled / len(copies),
               "threads": 1 if type(index.index).__name__ == "MultiIndex" else threads,
               "batch": len(queries),
               "index": type(index.index).__name__, "build_s": built, "distance": 31}
    return Row("match", f"bank of {size:,}", "ok", t.images, t.seconds, t.images_per_s, t.peak_rss_mib,
               t.start_rss_mib, t.repeats, details=details)


def format_hashes(rows: list[Row]) -> list[str]:
    lines = []
    for r in rows:
        if r.stage == "hash" and r.status == "ok" and "share_of_classifier" in r.details:
            lines.append(f"PDQ per image: {1000 / r.images_per_s:.2f} ms, "
                         f"{r.details['share_of_classifier']:.2%} of the classifier's time ({r.details['classifier']}; "
                         "goal: under 5% on CPU)")
        if r.stage == "match" and r.status == "ok":
            d = r.details
            lines.append(f"bank match: {r.images_per_s:,.0f} lookups/s against {d['bank']:,} hashes on {d['threads']} core{'s' if d['threads'] > 1 else ''} "
                         f"threads ({d['index']}, built in {d['build_s']:.1f} s), recall {d['recall']:.3f} of "
                         f"{d['planted']} planted copies at distance {d['distance']}, {d['batch']:,} lookups a call "
                         "(goal: 20,000 lookups/s, recall 1.0)")
    return lines
