"""Where metadata sits in an image file, found by walking its segments and chunks (never by decoding pixels).

JPEG: APP1 segments (EXIF, XMP) and APP11 (C2PA's JUMBF boxes); PNG: text chunks (``tEXt``, ``zTXt``,
``iTXt``), ``eXIf`` and ``caBX`` (C2PA); WebP: the ``EXIF``, ``XMP `` and ``C2PA`` chunks of its RIFF
container.  Every size is bounded: a text over :data:`MAX_TEXT_BYTES` (compressed or not) or a manifest
store over :data:`MAX_MANIFEST_BYTES` is a :class:`~.errors.ProvenanceError`, never read whole.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from dfscan.workers.provenance.errors import ProvenanceError

__all__ = ["MAX_MANIFEST_BYTES", "MAX_TEXT_BYTES", "Metadata", "mime_of", "metadata_of"]

# A generator's settings run to a few hundred KiB (a ComfyUI workflow); XMP packets to a few KiB.
MAX_TEXT_BYTES = 4 * 1024 * 1024
# Manifest stores with thumbnails and ingredients run to a few MiB.
MAX_MANIFEST_BYTES = 32 * 1024 * 1024
_PNG = b"\x89PNG\r\n\x1a\n"
_XMP_JPEG = b"http://ns.adobe.com/xap/1.0/\x00"
_PNG_KEYS = ("parameters", "prompt", "workflow", "XML:com.adobe.xmp", "Software")
_BMFF = {b"heic": "image/heic", b"heix": "image/heic", b"mif1": "image/heif", b"avif": "image/avif",
         b"qt  ": "video/quicktime"}


@dataclass
class Metadata:
    """The metadata of one file, as found: texts by key (capped), EXIF and XMP packets, the manifest's size."""

    texts: dict[str, str] = field(default_factory=dict)
    exif: bytes | None = None
    xmp: bytes | None = None
    manifest_bytes: int = 0


def mime_of(data: bytes) -> str | None:
    """The media type C2PA reads these bytes as (None: a format it has no manifests in)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(_PNG):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[4:8] == b"ftyp":
        return _BMFF.get(data[8:12], "video/mp4")
    return None


def metadata_of(data: bytes) -> Metadata:
    """The metadata of an image's bytes (JPEG, PNG, WebP; other formats: none); raises :class:`ProvenanceError`."""
    mime = mime_of(data)
    if mime == "image/jpeg":
        return _jpeg(data)
    if mime == "image/png":
        return _png(data)
    if mime == "image/webp":
        return _webp(data)
    return Metadata()


def _jpeg(data: bytes) -> Metadata:
    out = Metadata()
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xDA, 0xD9):  # start of scan: no more metadata segments
            break
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        body = data[pos + 4:pos + 2 + length]
        if marker == 0xE1 and body.startswith(b"Exif\x00\x00") and out.exif is None:
            out.exif = body[6:]
        elif marker == 0xE1 and body.startswith(_XMP_JPEG) and out.xmp is None:
            out.xmp = body[len(_XMP_JPEG):]
        elif marker == 0xEB:
            out.manifest_bytes += len(body)
        pos += 2 + length
    _check_manifest(out.manifest_bytes)
    return out


def _png(data: bytes) -> Metadata:
    out = Metadata()
    pos = len(_PNG)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IEND":
            break
        if kind == b"caBX":
            out.manifest_bytes += length
        elif kind == b"eXIf" and out.exif is None:
            out.exif = body
        elif kind in (b"tEXt", b"zTXt", b"iTXt"):
            key, text = _png_text(kind, body)
            if key in _PNG_KEYS and key not in out.texts:
                out.texts[key] = text
    _check_manifest(out.manifest_bytes)
    xmp = out.texts.pop("XML:com.adobe.xmp", None)
    out.xmp = xmp.encode("utf-8") if xmp is not None else None
    return out


def _png_text(kind: bytes, body: bytes) -> tuple[str, str]:
    """A PNG text chunk's keyword and text, its compressed text inflated to at most :data:`MAX_TEXT_BYTES`."""
    key, _, rest = body.partition(b"\x00")
    name = key.decode("latin-1")
    if len(rest) > MAX_TEXT_BYTES:
        raise ProvenanceError(f"PNG text chunk {name[:40]!r} is {len(rest)} bytes, over the {MAX_TEXT_BYTES}-byte cap")
    if kind == b"tEXt":
        return name, rest.decode("latin-1")
    if kind == b"zTXt":
        return name, _inflate(name, rest[1:]).decode("latin-1")
    if len(rest) < 2:
        raise ProvenanceError(f"PNG text chunk {name[:40]!r} is cut short")
    compressed, rest = rest[0], rest[2:]
    _language, _, rest = rest.partition(b"\x00")
    _translated, _, text = rest.partition(b"\x00")
    return name, (_inflate(name, text) if compressed else text).decode("utf-8", "replace")


def _inflate(name: str, raw: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(raw, MAX_TEXT_BYTES)
    except zlib.error as exc:
        raise ProvenanceError(f"PNG text chunk {name[:40]!r} does not inflate: {exc}") from None
    if inflater.unconsumed_tail:
        raise ProvenanceError(f"PNG text chunk {name[:40]!r} inflates past the {MAX_TEXT_BYTES}-byte cap")
    return text


def _webp(data: bytes) -> Metadata:
    out = Metadata()
    pos = 12
    while pos + 8 <= len(data):
        kind, length = struct.unpack("<4sI", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 8 + length + (length & 1)
        if kind == b"EXIF":
            out.exif = body[6:] if body.startswith(b"Exif\x00\x00") else body
        elif kind == b"XMP ":
            out.xmp = body
        elif kind == b"C2PA":
            out.manifest_bytes += length
    _check_manifest(out.manifest_bytes)
    return out


def _check_manifest(size: int) -> None:
    if size > MAX_MANIFEST_BYTES:
        raise ProvenanceError(f"C2PA manifest store is {size} bytes, over the {MAX_MANIFEST_BYTES}-byte cap")
