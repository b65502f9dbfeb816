"""Perceptual and exact hashes of media, and matching them against banks of known content.

``pdq`` (Meta's PDQ of RGB pixels, written as ThreatExchange and HMA write it),
``matcher`` (faiss binary indexes per bank, rebuilt when a bank changes).
Pure computation: the banks' storage is :mod:`dfscan.db.banks`, the scan's
stages :mod:`dfscan.workers.scoring.hashes`.
"""

from .errors import BadHash, HashingError
from .lines import BadLine, parse_bank_lines
from .matcher import FLAT_MAX, BankData, BankIndex, Found, Matcher, nearest_per_entry
from .pdq import HASH_KINDS, MATCH_DISTANCE, MIN_QUALITY, PdqHash, check_hash, hamming, hash_bytes, pdq, pdqhash_version

__all__ = ["FLAT_MAX", "HASH_KINDS", "MATCH_DISTANCE", "MIN_QUALITY", "BadHash", "BadLine", "BankData", "BankIndex", "Found",
           "HashingError", "Matcher", "PdqHash", "check_hash", "hamming", "hash_bytes", "nearest_per_entry", "parse_bank_lines", "pdq",
           "pdqhash_version"]
