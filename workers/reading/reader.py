"""Read a file's bytes and its size and mtime, turning every OS failure into an ImageError.

An ``s3://bucket/key`` path is an object: read with a ranged GET through the
process's :class:`~scanner.objects.ObjectStore` (its LastModified is the mtime;
its ETag goes to the row, for ``--incremental``).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from dfscan.scanner.objects import ObjectError, ObjectStore, is_object_url, object_store
from dfscan.scanner.paths import on_disk, open_path, stat_path
from dfscan.workers.reading.errors import ImageError

# Files beyond this are refused before reading: an image archive has no
# business holding a 1 GB ".jpg", and reading it would cost memory for nothing.
MAX_FILE_BYTES = 256 * 1024 * 1024
# The first bytes of a file, read before the rest: enough for every header
# :mod:`workers._headers` parses, so a file that is no image, or one that
# declares too many pixels, is refused without reading (or allocating) the rest.
HEAD_BYTES = 256 * 1024


@dataclass(frozen=True)
class FileData:
    path: str
    size: int
    mtime: float
    data: bytes
    etag: str | None = None  # an object's ETag (unquoted); None for a local file


def read_file(path: str, max_bytes: int = MAX_FILE_BYTES, store: ObjectStore | None = None) -> FileData:
    """The file's bytes; raises :class:`ImageError` with the reason it can't be read.

    ``path`` is the stored form of the name (see :mod:`scanner.paths`).
    """
    return read_head(path, max_bytes, head_bytes=max_bytes, store=store)


def read_head(path: str, max_bytes: int = MAX_FILE_BYTES, head_bytes: int = HEAD_BYTES,
              store: ObjectStore | None = None) -> FileData:
    """At most ``head_bytes`` of the file: the whole file when it is that small.

    ``FileData.size`` is the file's full size, so ``len(data) < size`` says
    the rest is still to read (:func:`read_file`).  ``store`` reads ``s3://``
    paths (None: boto3's default endpoint).
    """
    disk = on_disk(path)
    if is_object_url(disk):
        return _read_object(disk, max_bytes, head_bytes, store or object_store())
    try:
        # stat_path and open_path also reach files whose path exceeds PATH_MAX.
        if not stat.S_ISREG(stat_path(disk).st_mode):
            raise ImageError("not-regular", "not a regular file")
        # O_NONBLOCK: should the path become a FIFO after the check, opening it
        # must still not wait for a writer.
        fd = open_path(disk, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
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
        data = _read_exactly(fd, min(st.st_size, head_bytes))
    except OSError as exc:
        raise _os_error(exc) from None
    finally:
        os.close(fd)
    if not data:
        raise ImageError("empty", "empty file")
    return FileData(path=disk, size=st.st_size, mtime=st.st_mtime, data=data)


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


def stat_quietly(path: str) -> tuple[int | None, float | None]:
    """Size and mtime for an error row, or ``(None, None)`` (always for an object: no request is spent on it)."""
    if is_object_url(path):
        return None, None
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
