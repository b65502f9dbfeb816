"""Errors of the hashing package."""

from __future__ import annotations

__all__ = ["BadHash", "HashingError"]


class HashingError(Exception):
    """Base of this package's errors."""


class BadHash(HashingError, ValueError):
    """A hash that is not what its kind requires (PDQ: 64 hex digits; MD5: 32; SHA-256: 64)."""
