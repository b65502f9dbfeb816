"""A file's provenance from its bytes: the manifest, the metadata's declarations and the watermark, in one row.

Each reader's failure is kept as the row's reason (``c2pa`` then reads 'error'), and what the other readers
found stays: a broken XMP packet does not hide a valid manifest's signer.  Nothing here raises for a file.
"""

from __future__ import annotations

import io
from typing import IO

import numpy as np
from PIL import Image

from dfscan.db.records import ProvenanceRow
from dfscan.workers.provenance.containers import metadata_of, mime_of
from dfscan.workers.provenance.declarations import SYNTHETIC_SOURCE_TYPES, Declarations, declarations_of
from dfscan.workers.provenance.errors import ProvenanceError
from dfscan.workers.provenance.manifests import Manifest, ManifestReader
from dfscan.workers.provenance.watermarks import WatermarkMatch, match_watermark

__all__ = ["ProvenanceReader"]

# Generators' outputs are at most a few megapixels (SD v1 512 x 512, SDXL 1024 x 1024); a larger image (a camera's)
# is not decoded again for a watermark it would not carry, which keeps the cost off big photographs.
WATERMARK_DECODE_PIXELS = 2048 * 2048


class ProvenanceReader:
    """Reads provenance with one C2PA context; ``max_pixels`` bounds the images decoded for the watermark."""

    def __init__(self, trust_anchors_pem: str | None = None, *, max_pixels: int = 50_000_000,
                 watermark: bool = True) -> None:
        self.manifests = ManifestReader(trust_anchors_pem)
        self.max_pixels = max_pixels
        self.watermark = watermark

    def image(self, data: bytes) -> ProvenanceRow:
        """An image's provenance from its bytes."""
        errors: list[str] = []
        manifest = _attempt(errors, lambda: self.manifests.read(mime_of(data), data), Manifest("none"))
        declared = _attempt(errors, lambda: declarations_of(metadata_of(data)), Declarations())
        mark = _attempt(errors, lambda: self._watermark(data), None) if self.watermark else None
        return _row(manifest, declared, mark, errors)

    def video(self, head: bytes, stream: IO[bytes]) -> ProvenanceRow:
        """A video's manifest, read from ``stream`` (``head``: its first bytes, to know its type)."""
        errors: list[str] = []
        manifest = _attempt(errors, lambda: self.manifests.read(mime_of(head), stream), Manifest("none"))
        return _row(manifest, Declarations(), None, errors)

    def _watermark(self, data: bytes) -> WatermarkMatch | None:
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > min(self.max_pixels, WATERMARK_DECODE_PIXELS):
                    return None
                rgb = np.asarray(im.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
            raise ProvenanceError(f"watermark: the image does not decode ({type(exc).__name__})") from None
        return match_watermark(rgb)


def _attempt(errors: list[str], read, fallback):
    """``read()``, or ``fallback`` with the reason kept: a file's provenance never stops its batch."""
    try:
        return read()
    except ProvenanceError as exc:
        errors.append(str(exc))
    except Exception as exc:  # noqa: BLE001 - a library's error on one file is that file's reason, as ProvenanceError
        errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
    return fallback


def _row(manifest: Manifest, declared: Declarations, mark: WatermarkMatch | None, errors: list[str]) -> ProvenanceRow:
    source_type = manifest.source_type or declared.source_type
    synthetic = (source_type in SYNTHETIC_SOURCE_TYPES or declared.settings_key is not None
                 or (mark is not None and mark.name is not None))
    generator = manifest.claim_generator or declared.settings_generator or declared.creator_tool
    return ProvenanceRow(
        c2pa="error" if errors else manifest.c2pa, c2pa_state=manifest.state, codes=manifest.codes,
        signer=manifest.signer, issuer=manifest.issuer, generator=generator,
        claim_generator=manifest.claim_generator, creator_tool=declared.creator_tool,
        settings_key=declared.settings_key, source_type=source_type,
        watermark=mark.name if mark is not None else None, watermark_ber=mark.ber if mark is not None else None,
        synthetic_declared=synthetic, error="; ".join(errors)[:1000] if errors else None)
