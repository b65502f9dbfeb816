"""Why a file's provenance could not be read: the reason becomes the row's provenance ``error`` (never the verdict's)."""

from __future__ import annotations

__all__ = ["ProvenanceError"]


class ProvenanceError(Exception):
    """One reader (C2PA, XMP, EXIF, PNG text, watermark) failed on a file; ``str()`` is a short reason."""
