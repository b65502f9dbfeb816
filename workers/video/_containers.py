"""Which video containers are read, and what a file that is none of them is.

Like the image decoders' allow-list (:data:`workers.images.decode.ALLOWED_FORMATS`),
a video is opened with one named FFmpeg demuxer chosen from its first bytes,
never by letting FFmpeg probe every demuxer it has: a JPEG named ``.mp4``
is then "a JPEG image, not a video", not a one-frame "video".
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from dfscan.core.registry import Registry
from dfscan.workers.reading.reader import sniff

# ISO base media (MP4, MOV, M4V, 3GP) files start with one of these boxes.
_MP4_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid"})


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    demuxer: str  # FFmpeg's demuxer name, passed to av.open(format=...)
    matches: Callable[[bytes], bool]
    # Why a file of this container that FFmpeg refused looks cut short (None: it doesn't), from
    # ``read_at(offset, n) -> bytes`` and the file's size.
    missing_index: Callable[[Callable[[int, int], bytes], int], str | None] | None = None


def _mp4(head: bytes) -> bool:
    return len(head) >= 8 and head[4:8] in _MP4_BOXES


def mp4_missing_moov(read_at: Callable[[int, int], bytes], size: int) -> str | None:
    """'no moov atom ...' when the file's top-level boxes hold no moov: an interrupted copy or recording.

    Walks the box headers only (``read_at(offset, n)`` per box: a seek on disk, a ranged GET in object
    storage), never the media data.
    """
    seen: list[bytes] = []
    pos = 0
    while pos + 8 <= size and len(seen) < 10_000:
        header = read_at(pos, 16)
        if len(header) < 8:
            break
        length, kind = struct.unpack(">I4s", header[:8])
        if length == 1 and len(header) >= 16:
            length = struct.unpack(">Q", header[8:16])[0]
        elif length == 0:  # the box runs to the end of the file
            length = size - pos
        if length < 8:
            break
        seen.append(kind)
        if kind == b"moov":
            return None
        pos += length
    if pos > size:
        cut = seen[-1].decode("latin-1") if seen else "?"
        return f"no moov atom (the file ends inside its '{cut}' box: cut short while being copied or recorded)"
    return "no moov atom (the index of the video is missing)"


def _matroska(head: bytes) -> bool:
    return head.startswith(b"\x1a\x45\xdf\xa3")


def _avi(head: bytes) -> bool:
    return head[:4] == b"RIFF" and head[8:12] == b"AVI "


# Tried in this order by :func:`container_for`.
CONTAINERS: Registry[ContainerSpec] = Registry("container", entries=(
    ContainerSpec("mp4", "mov", _mp4, missing_index=mp4_missing_moov),
    ContainerSpec("matroska", "matroska", _matroska),
    ContainerSpec("avi", "avi", _avi),
))

# How many leading bytes :func:`container_for` needs.
SIGNATURE_BYTES = 64


def container_for(head: bytes) -> ContainerSpec | None:
    for spec in CONTAINERS.values():
        if spec.matches(head):
            return spec
    return None


def what_else(head: bytes) -> str:
    """A short phrase for a file that is no container we read: 'a JPEG image' or 'an unknown format'."""
    header = sniff(head)
    if header.format is not None:
        return f"a {header.format} image"
    return "an unknown format"
