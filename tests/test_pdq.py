"""PDQ as dfscan computes it, against a reference written here from Meta's published algorithm; faiss matching.

The reference (:func:`reference_pdq`) follows Meta's PDQ paper and C++
(``pdq/cpp/hashing/pdqhashing.cpp``): luminance (0.299, 0.587, 0.114), two
passes of Jarosz box filters along rows and columns with windows of
``ceil(old / (2 * 64))``, decimation to 64 x 64 at ``(i + 0.5) * old / 64``,
the 16 x 16 DCT without its DC row and column, and one bit per coefficient:
above the median.  Bit ``i * 16 + j`` is coefficient (i, j); the hex writes
bit 255 first, as Meta's ``Hash256`` does.  Images: scikit-image's photographs.
"""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data

from dfscan.workers.hashing import (FLAT_MAX, BankData, BankIndex, BadLine, Matcher, hamming, hash_bytes,
                                    parse_bank_lines, pdq)

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")


def photo(name: str) -> np.ndarray:
    a = getattr(skimage.data, name)()
    return np.stack([a] * 3, axis=-1) if a.ndim == 2 else a[..., :3]


def _box(x: np.ndarray, full: int, axis: int) -> np.ndarray:
    """PDQ's ``box1DFloat``: out[k] is the mean of x[max(0, k + half - full) .. min(n - 1, k + half - 1)]."""
    n = x.shape[axis]
    half = (full + 2) // 2
    c = np.cumsum(x, axis=axis)
    c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
    k = np.arange(n)
    lo, hi = np.maximum(0, k + half - full), np.minimum(n - 1, k + half - 1)
    shape = [1, 1]
    shape[axis] = n
    return (np.take(c, hi + 1, axis=axis) - np.take(c, lo, axis=axis)) / (hi - lo + 1).reshape(shape)


def reference_pdq(rgb: np.ndarray) -> str:
    a = rgb.astype(np.float64)
    y = 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]
    rows, cols = y.shape
    along_rows, along_cols = (cols + 127) // 128, (rows + 127) // 128
    for _ in range(2):
        y = _box(_box(y, along_rows, 1), along_cols, 0)
    small = y[np.ix_(((np.arange(64) + 0.5) * rows / 64).astype(int), ((np.arange(64) + 0.5) * cols / 64).astype(int))]
    i, j = np.arange(1, 17)[:, None], np.arange(64)[None, :]
    dct = np.sqrt(2.0 / 64) * np.cos(np.pi / 2 / 64 * i * (2 * j + 1))
    b = (dct @ small @ dct.T).reshape(-1)
    bits = b > np.median(b)  # bit k = coefficient k
    return "%064x" % sum(1 << k for k in range(256) if bits[k])


@pytest.mark.parametrize("name", PHOTOS)
def test_pdq_agrees_with_the_reference_within_a_few_bits(name: str) -> None:
    image = photo(name)
    ours, ref = pdq(image), reference_pdq(image)
    print(f"{name}: {ours.hex} vs reference {ref}: {hamming(ours.hex, ref)} bits, quality {ours.quality}")
    assert hamming(ours.hex, ref) <= 4
    assert ours.quality >= 50


def test_dihedral_hashes_start_upright_and_match_a_mirror() -> None:
    image = photo("astronaut")
    h = pdq(image, dihedral=True)
    assert len(h.variants) == 8 and h.variants[0] == h.hex == pdq(image).hex
    mirrored = pdq(np.ascontiguousarray(image[:, ::-1]))
    assert hamming(mirrored.hex, h.hex) > 31  # PDQ itself is not mirror-proof ...
    assert min(hamming(mirrored.hex, v) for v in h.variants) <= 31  # ... its dihedral variants are


def test_a_flat_or_tiny_image_has_low_quality() -> None:
    flat = pdq(np.full((64, 64, 3), 128, np.uint8))
    tiny = pdq(np.zeros((2, 2, 3), np.uint8))
    assert not flat.matchable and not tiny.matchable
    assert flat.quality < 50 and tiny.quality < 50


def _planted(n: int, seed: int = 7) -> tuple[list[str], list[str], list[int]]:
    """``n`` random hashes, and near copies (distance 1..31) of a few of them with the indexes they copy."""
    rng = np.random.default_rng(seed)
    bank = [bytes(v).hex() for v in rng.integers(0, 256, (n, 32), dtype=np.uint8)]
    queries, truth = [], []
    for k, i in enumerate(rng.choice(n, 50, replace=False)):
        bits = np.unpackbits(hash_bytes([bank[i]])[0])
        flip = rng.choice(256, 1 + k % 31, replace=False)
        bits[flip] ^= 1
        queries.append(np.packbits(bits).tobytes().hex())
        truth.append(int(i))
    return bank, queries, truth


@pytest.mark.parametrize("n", [1000, FLAT_MAX + 1000])
def test_bank_index_finds_every_planted_copy_flat_and_multi_hash(n: int) -> None:
    bank, queries, truth = _planted(n)
    data = BankData(1, "b", "pdq", 31, 1, bank, [str(i) for i in range(n)], [None] * n)
    index = BankIndex.build(data)
    found = index.search(queries)
    for q, i, hits in zip(queries, truth, found):
        assert str(i) in {f.ref for f in hits}, f"planted copy of {i} not found"
        assert all(f.distance == hamming(q, f.hash) <= 31 for f in hits)
    # Random hashes are ~128 bits apart: nothing else is found.
    assert index.search([bytes(32).hex()]) == [[]]


def test_matcher_rebuilds_a_bank_whose_version_moved_and_forgets_a_disabled_one() -> None:
    near = "0" * 63 + "1"
    versions = {1: 1}
    contents = {1: ["f" * 64]}
    matcher = Matcher(lambda: dict(versions), lambda i: BankData(i, "b", "pdq", 31, versions[i], contents[i],
                                                                  [None] * len(contents[i]), [None] * len(contents[i])))
    matcher.refresh()
    assert matcher.match("pdq", [near]) == [[]]
    contents[1] = ["0" * 64]
    versions[1] = 2
    matcher.refresh()
    (hits,) = matcher.match("pdq", [near])
    assert [f.distance for f in hits] == [1]
    versions.clear()
    matcher.refresh()
    assert matcher.match("pdq", [near]) == [[]]


def test_bank_lines_report_each_malformed_line_by_number() -> None:
    good = "a" * 64
    parsed = list(parse_bank_lines(["hash,ref,label", f"{good},r1,fake", "", "# a comment", "xyz,r2", good.upper(),
                                    "b" * 63]))
    assert parsed[0] == (good, "r1", "fake")
    assert parsed[2] == (good, None, None)
    bad = [p for p in parsed if isinstance(p, BadLine)]
    assert [b.lineno for b in bad] == [5, 7]
    assert "64 hex digits" in str(bad[0]) and str(bad[0]).startswith("line 5:")
    sha = list(parse_bank_lines(["c" * 64], "sha256"))
    assert sha == [("c" * 64, None, None)]
    assert isinstance(list(parse_bank_lines(["c" * 64], "md5"))[0], BadLine)


def test_bench_match_row_recalls_every_planted_copy() -> None:
    """``dfscan bench --bank N``'s row, on a bank past FLAT_MAX (multi-index hashing): recall 1.0, figures printed."""
    from dfscan.bench.hashes import bank_row, format_hashes

    row = bank_row(FLAT_MAX + 20_000)
    print(format_hashes([row])[0])
    assert row.status == "ok" and row.details["index"] == "MultiIndex"
    assert row.details["recall"] == 1.0 and row.images > 0
