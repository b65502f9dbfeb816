"""Meta's PDQ perceptual hash of RGB pixels, written as ThreatExchange and HMA write it.

:func:`pdq` gives the 256-bit hash as 64 hex digits, most significant bit
first (``"%064x" % int(bits, 2)``, as ThreatExchange's exports and Meta's
hasher-matcher-actioner write them, so banks exchange with those tools), and
PDQ's quality (0-100: how much gradient the image has; under
:data:`MIN_QUALITY`, HMA does not match a hash).  ``dihedral`` adds the hashes
of the seven other rotations and mirrors, which a bank holding the upright
image matches.  The hashing itself is the ``pdqhash`` package (Meta's C++).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import BadHash

__all__ = ["HASH_KINDS", "MATCH_DISTANCE", "MIN_QUALITY", "PdqHash", "check_hash", "hamming", "hash_bytes", "pdq",
           "pdqhash_version"]

# HMA's defaults: a match is within 31 bits of 256; a hash of quality under 50 is not matched.
MATCH_DISTANCE = 31
MIN_QUALITY = 50
# A bank's kind -> the hex digits of its hashes: PDQ is perceptual (matched within a distance), MD5 and
# SHA-256 are exact (the file's bytes).
HASH_KINDS = {"pdq": 64, "md5": 32, "sha256": 64}
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class PdqHash:
    """One image's PDQ: ``hex`` (upright) and its quality; ``variants``: the dihedral hashes (upright first)."""

    hex: str
    quality: int
    variants: tuple[str, ...] = ()

    @property
    def matchable(self) -> bool:
        return self.quality >= MIN_QUALITY

    def all(self) -> tuple[str, ...]:
        return self.variants or (self.hex,)


def _hex(bits: np.ndarray) -> str:
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex()


def pdq(rgb: np.ndarray, *, dihedral: bool = False) -> PdqHash:
    """PDQ of an (H, W, 3) uint8 image (a grey (H, W) one is taken as its own three channels)."""
    import pdqhash

    image = np.asarray(rgb)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = np.ascontiguousarray(image[:, :, :3], dtype=np.uint8)
    if dihedral:
        hashes, quality = pdqhash.compute_dihedral(image)
        variants = tuple(_hex(h) for h in hashes)
        return PdqHash(variants[0], int(quality), variants)
    bits, quality = pdqhash.compute(image)
    return PdqHash(_hex(bits), int(quality))


def check_hash(text: str, kind: str = "pdq") -> str:
    """``text`` as a hash of ``kind``: lower-case hex of the right length, else :class:`BadHash`."""
    if kind not in HASH_KINDS:
        raise BadHash(f"unknown hash kind {kind!r}; known: {', '.join(HASH_KINDS)}")
    value = text.strip().lower()
    digits = HASH_KINDS[kind]
    if len(value) != digits or not _HEX.fullmatch(value):
        raise BadHash(f"not a {kind} hash ({digits} hex digits): {text.strip()[:80]!r}")
    return value


def hash_bytes(hexes: list[str]) -> np.ndarray:
    """Hex hashes as an (n, 32) uint8 array, bits in the order of the hex (faiss's binary vectors)."""
    if not hexes:
        return np.zeros((0, 32), dtype=np.uint8)
    return np.frombuffer(bytes.fromhex("".join(hexes)), dtype=np.uint8).reshape(len(hexes), -1)


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hex hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def pdqhash_version() -> str | None:
    try:
        import pdqhash
    except ImportError:
        return None
    return getattr(pdqhash, "__version__", None)
