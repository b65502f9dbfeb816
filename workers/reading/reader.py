"""Read a file's bytes, size and mtime (every OS failure an ImageError), and what its header claims.

An ``s3://bucket/key`` path is an object: read with a ranged GET through the
process's :class:`~scanner.objects.ObjectStore` (its LastModified is the mtime;
its ETag goes to the row, for ``--incremental``).

``roots``: the scan follows no symbolic link and its reads stay under these
real paths (:mod:`scanner.confine`); a file reached through a link on its path
(a directory swapped for one after the walk) is refused, ``outside-root``,
without a byte of it read.

:func:`sniff` is the cheap header check: what an image file claims to be,
read from its first bytes.  Used before DALI, where one bad sample fails a whole batch: a file whose
header is not one of the formats DALI decodes like Pillow, or that looks
truncated, goes to the Pillow decoder instead (which gives the reference
verdict or the reference reason); a header that declares more pixels than the
limit is refused without decoding anything.  Nothing here decodes pixels.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from dfscan.scanner.confine import open_confined, stat_confined
from dfscan.scanner.errors import OutsideRoot
from dfscan.scanner.objects import ObjectError, ObjectStore, is_object_url, object_store
from dfscan.scanner.paths import on_disk
from dfscan.workers.reading.errors import ImageError

# Files beyond this are refused before reading: an image archive has no
# business holding a 1 GB ".jpg", and reading it would cost memory for nothing.
MAX_FILE_BYTES = 256 * 1024 * 1024
# The first bytes of a file, read before the rest: enough for every header
# :func:`sniff` parses, so a file that is no image, or one that
# declares too many pixels, is refused without reading (or allocating) the rest.
HEAD_BYTES = 256 * 1024


@dataclass(frozen=True)
class FileData:
    path: str
    size: int
    mtime: float
    data: bytes
    etag: str | None = None  # an object's ETag (unquoted); None for a local file

    @cached_property
    def header(self) -> "Header":
        """What these bytes claim to be (:func:`sniff`), sniffed once however many checks ask."""
        return sniff(self.data)


def read_file(path: str, max_bytes: int = MAX_FILE_BYTES, store: ObjectStore | None = None,
              roots: Sequence[str] | None = None) -> FileData:
    """The file's bytes; raises :class:`ImageError` with the reason it can't be read.

    ``path`` is the stored form of the name (see :mod:`scanner.paths`).
    """
    return read_head(path, max_bytes, head_bytes=max_bytes, store=store, roots=roots)


def file_digests(path: str, algorithms: Sequence[str], *, store: ObjectStore | None = None,
                 roots: Sequence[str] | None = None, chunk_bytes: int = 1 << 20) -> dict[str, str]:
    """Hex digests (hashlib names: ``md5``, ``sha256``) of the whole file, read in chunks; raises :class:`ImageError`.

    For exact hash banks of files of any size (a video's bytes are never read whole); an ``s3://`` object is
    read whole, up to :data:`MAX_FILE_BYTES`.
    """
    digests = {name: hashlib.new(name) for name in algorithms}
    disk = on_disk(path)
    if is_object_url(disk):
        data = read_file(path, MAX_FILE_BYTES, store=store).data
        for h in digests.values():
            h.update(data)
        return {name: h.hexdigest() for name, h in digests.items()}
    fd = open_local(disk, roots)
    try:
        while chunk := os.read(fd, chunk_bytes):
            for h in digests.values():
                h.update(chunk)
    except OSError as exc:
        raise _os_error(exc) from None
    finally:
        os.close(fd)
    return {name: h.hexdigest() for name, h in digests.items()}


def read_head(path: str, max_bytes: int = MAX_FILE_BYTES, head_bytes: int = HEAD_BYTES,
              store: ObjectStore | None = None, roots: Sequence[str] | None = None) -> FileData:
    """At most ``head_bytes`` of the file: the whole file when it is that small.

    ``FileData.size`` is the file's full size, so ``len(data) < size`` says
    the rest is still to read (:func:`read_file`).  ``store`` reads ``s3://``
    paths (None: boto3's default endpoint); ``roots`` confine the read (see the module).
    """
    disk = on_disk(path)
    if is_object_url(disk):
        return _read_object(disk, max_bytes, head_bytes, store or object_store())
    fd = open_local(disk, roots)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError("not-regular", "not a regular file")
        if st.st_size == 0:
            raise ImageError("empty", "empty file")
        if st.st_size > max_bytes:
            raise ImageError("too-large", f"file is {st.st_size} bytes, over the {max_bytes}-byte limit")
        data = _read_exactly(fd, min(st.st_size, head_bytes))
    except OSError as exc:
        raise _os_error(exc) from None
    finally:
        os.close(fd)
    if not data:
        raise ImageError("empty", "empty file")
    return FileData(path=disk, size=st.st_size, mtime=st.st_mtime, data=data)


def open_local(disk: str, roots: Sequence[str] | None = None) -> int:
    """A descriptor of the regular file ``disk`` (its on-disk name); raises :class:`ImageError`.

    The file is checked to be regular before it is opened (a device is never
    opened), also when its path exceeds PATH_MAX; under ``roots`` with no link
    followed on the way.
    """
    try:
        # O_NONBLOCK: should the path become a FIFO after the check, opening it
        # must still not wait for a writer.
        return open_confined(disk, roots, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), _regular)
    except OutsideRoot:
        raise _outside() from None
    except OSError as exc:
        raise _os_error(exc) from None


def _regular(st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ImageError("not-regular", "not a regular file")


def _outside() -> ImageError:
    return ImageError("outside-root", "outside the scan's roots: a symbolic link on the file's path "
                                      "(swapped in after the walk), which this scan does not follow")


def _read_object(url: str, max_bytes: int, head_bytes: int, store: ObjectStore) -> FileData:
    """One ranged GET: the object's first ``head_bytes`` (all of it when small) and its full size."""
    try:
        data, info = store.get(url, min(head_bytes, max_bytes))
    except ObjectError as exc:
        raise ImageError(exc.code, exc.message) from None
    if info.size == 0 or not data:
        raise ImageError("empty", "empty object")
    if info.size > max_bytes:
        raise ImageError("too-large", f"object is {info.size} bytes, over the {max_bytes}-byte limit")
    return FileData(path=url, size=info.size, mtime=info.mtime, data=data, etag=info.etag or None)


def _read_exactly(fd: int, n: int) -> bytes:
    """Up to ``n`` bytes in one allocation (a regular file's read returns them all at once).

    No list of blocks joined into a second copy: the old way held each file
    twice at the moment of joining.
    """
    data = os.read(fd, n)
    if 0 < len(data) < n:  # a short read (a signal, a file shrinking): rare, finish it block by block
        parts = [data]
        got = len(data)
        while got < n:
            block = os.read(fd, min(n - got, 1 << 22))
            if not block:
                break
            parts.append(block)
            got += len(block)
        data = b"".join(parts)
    return data


def stat_quietly(path: str, roots: Sequence[str] | None = None) -> tuple[int | None, float | None]:
    """Size and mtime for an error row, or ``(None, None)`` (always for an object: no request is spent on it).

    Under ``roots``, a file reached through a link has neither: its row says nothing of what lies outside.
    """
    if is_object_url(path):
        return None, None
    try:
        st = stat_confined(on_disk(path), roots)
    except (OSError, OutsideRoot):
        return None, None
    return st.st_size, st.st_mtime


def _os_error(exc: OSError) -> ImageError:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return ImageError("missing", "file not found (vanished since it was listed)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ImageError("unreadable", "permission denied")
    if exc.errno == errno.EISDIR:
        return ImageError("not-regular", "is a directory")
    if exc.errno == errno.ELOOP:
        return ImageError("unreadable", "too many levels of symbolic links")
    return ImageError("unreadable", f"read failed: {exc.strerror or exc}")


# -- headers --------------------------------------------------------------------------------


# JPEG start-of-frame markers that carry the image size.  SOF0-2 are the
# baseline, extended and progressive Huffman modes every decoder handles;
# the rest (lossless, arithmetic, hierarchical) go to Pillow.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_COMMON_SOF = frozenset({0xC0, 0xC1, 0xC2})
# A JPEG's end-of-image marker should sit near its end; real files carry a
# little padding or trailer after it, so look this far back for it.
_EOI_WINDOW = 4096
# Classic and BigTIFF, both byte orders, and the two odd orders Pillow also accepts.
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"MM*\x00", b"II\x00*", b"MM\x00+", b"II+\x00")
# PNG chunks after the image data that change nothing Pillow or DALI shows the model.
_PNG_TRAILERS_OK = frozenset({b"IDAT", b"IEND"})


@dataclass(frozen=True)
class Header:
    """``format`` is None for bytes that match no known signature."""

    format: str | None
    width: int | None = None
    height: int | None = None
    detail: str = ""  # why the file is not DALI-safe, when it isn't
    dali_safe: bool = False

    @property
    def pixels(self) -> int | None:
        return None if self.width is None or self.height is None else self.width * self.height


def sniff(data: bytes) -> Header:
    """The format, size and DALI-safety of ``data``, from its signature and header."""
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        w, h = struct.unpack("<HH", data[6:10]) if len(data) >= 10 else (None, None)
        return Header("GIF", w, h, "DALI does not decode GIF")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    if data[:2] == b"BM":
        return _bmp(data)
    if data[:4] in _TIFF_SIGNATURES:
        return Header("TIFF", detail="TIFF variants (16-bit, float, multi-page) decode differently: Pillow decides")
    return Header(None, detail="unknown signature")


def _jpeg(data: bytes) -> Header:
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return Header("JPEG", detail="corrupt marker structure")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return Header("JPEG", detail="no frame header before the image data")
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:
            return Header("JPEG", detail="corrupt segment length")
        if marker in _SOF_MARKERS:
            if pos + 10 > n:
                break
            precision, h, w, components = struct.unpack(">BHHB", data[pos + 4 : pos + 10])
            if marker not in _COMMON_SOF:
                return Header("JPEG", w, h, f"uncommon JPEG coding (SOF{marker - 0xC0})")
            if precision != 8:
                return Header("JPEG", w, h, f"{precision}-bit JPEG")
            if components not in (1, 3, 4):
                return Header("JPEG", w, h, f"{components} colour components")
            if w == 0 or h == 0:
                return Header("JPEG", w, h, "zero size in the frame header")
            if b"\xff\xd9" not in data[-_EOI_WINDOW:]:
                return Header("JPEG", w, h, "no end-of-image marker (truncated?)")
            return Header("JPEG", w, h, dali_safe=True)
        pos += 2 + length
    return Header("JPEG", detail="header ends before the frame header (truncated)")


def _png(data: bytes) -> Header:
    if len(data) < 33 or data[12:16] != b"IHDR":
        return Header("PNG", detail="no IHDR chunk")
    w, h, depth, color = struct.unpack(">IIBB", data[16:26])
    if w == 0 or h == 0:
        return Header("PNG", w, h, "zero size in IHDR")
    if b"IEND" not in data[-64:]:
        return Header("PNG", w, h, "no IEND chunk (truncated?)")
    if data.find(b"acTL", 33, 4096) != -1:
        return Header("PNG", w, h, "animated PNG")
    trailer = _png_after_idat(data)
    if trailer:
        # Pillow reads chunks after the image data (text, eXIf) at load time: they can
        # carry an orientation or make Pillow refuse the file, and DALI never looks.
        return Header("PNG", w, h, f"{trailer} chunk after the image data")
    return Header("PNG", w, h, dali_safe=True)


def _png_after_idat(data: bytes) -> str:
    """The name of the first chunk after the image data other than IEND, or ''."""
    pos, n, seen_idat = 8, len(data), False
    while pos + 8 <= n:
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            seen_idat = True
        elif seen_idat and kind not in _PNG_TRAILERS_OK:
            return kind.decode("latin-1")
        if kind == b"IEND":
            return ""
        pos += 12 + length
    return ""


def _webp(data: bytes) -> Header:
    kind = data[12:16]
    if kind == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", data[26:30])
        return Header("WEBP", w & 0x3FFF, h & 0x3FFF, dali_safe=True)
    if kind == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return Header("WEBP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, dali_safe=True)
    if kind == b"VP8X" and len(data) >= 30:
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return Header("WEBP", w, h, "extended WebP (alpha, animation or metadata): DALI decodes only simple WebP")
    return Header("WEBP", detail="unrecognised WebP chunk")


def _bmp(data: bytes) -> Header:
    if len(data) < 26:
        return Header(None, detail="too short for a BMP header")
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        w, h = struct.unpack("<HH", data[18:22])
        return Header("BMP", w, h, "OS/2 bitmap")
    if header_size < 40 or len(data) < 30:
        return Header(None, detail="not a BMP header")
    w, h = struct.unpack("<ii", data[18:26])
    (bits,) = struct.unpack("<H", data[28:30])
    w, h = abs(w), abs(h)
    if bits != 24:  # palette, 16-bit and 32-bit (alpha, bit fields) bitmaps: Pillow decides
        return Header("BMP", w, h, f"{bits}-bit bitmap")
    return Header("BMP", w, h, dali_safe=True if w and h else False, detail="" if w and h else "zero size")
