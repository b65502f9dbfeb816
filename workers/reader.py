"""Read a file's bytes and its size and mtime, turning every OS failure into an ImageError."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from dfscan.scanner.paths import on_disk, open_path, stat_path
from dfscan.workers.errors import ImageError

# Files beyond this are refused before reading: an image archive has no
# business holding a 1 GB ".jpg", and reading it would cost memory for nothing.
MAX_FILE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class FileData:
    path: str
    size: int
    mtime: float
    data: bytes


def read_file(path: str, max_bytes: int = MAX_FILE_BYTES) -> FileData:
    """The file's bytes; raises :class:`ImageError` with the reason it can't be read.

    ``path`` is the stored form of the name (see :mod:`scanner.paths`).
    """
    path = on_disk(path)
    try:
        # stat_path and open_path also reach files whose path exceeds PATH_MAX.
        if not stat.S_ISREG(stat_path(path).st_mode):
            raise ImageError("not-regular", "not a regular file")
        # O_NONBLOCK: should the path become a FIFO after the check, opening it
        # must still not wait for a writer.
        fd = open_path(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _os_error(exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError("not-regular", "not a regular file")
        if st.st_size == 0:
            raise ImageError("empty", "empty file")
        if st.st_size > max_bytes:
            raise ImageError("too-large", f"file is {st.st_size} bytes, over the {max_bytes}-byte limit")
        chunks = []
        remaining = st.st_size
        while remaining > 0:
            block = os.read(fd, min(remaining, 1 << 22))
            if not block:
                break
            chunks.append(block)
            remaining -= len(block)
        data = b"".join(chunks)
    except OSError as exc:
        raise _os_error(exc) from None
    finally:
        os.close(fd)
    if not data:
        raise ImageError("empty", "empty file")
    return FileData(path=path, size=st.st_size, mtime=st.st_mtime, data=data)


def stat_quietly(path: str) -> tuple[int | None, float | None]:
    """Size and mtime for an error row, or ``(None, None)``."""
    try:
        st = stat_path(on_disk(path))
    except OSError:
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
