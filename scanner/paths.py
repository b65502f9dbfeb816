"""File names that are not valid UTF-8, and paths longer than PATH_MAX.

POSIX file names are bytes; SQL text columns, JSON messages and CSV are
Unicode.  A name that doesn't decode travels and is stored in a reversible
form: each undecodable byte is written as ``\\xNN`` and each backslash as
``\\\\``.  A valid UTF-8 name is stored exactly as it is unless it contains
one of those two sequences itself (``photo\\x41.jpg`` is stored
``photo\\\\x41.jpg``), so every stored name decodes to exactly one file and
the names of ordinary files never change.

A path may exceed PATH_MAX (4096 bytes on Linux) when a tree is deep: the
kernel then refuses ``open(path)`` with ENAMETOOLONG even though the file is
there.  :func:`open_path` and :func:`stat_path` walk such a path a few
components at a time with directory file descriptors, as the walker does.
"""

from __future__ import annotations

import errno
import os
import re

__all__ = ["on_disk", "open_path", "stat_path", "storable"]

# What on_disk decodes: an escaped backslash or an escaped byte.
_ESCAPE = re.compile(r"\\(?:\\|x([0-9a-f]{2}))")
# A piece of path handed to one openat() call stays well under PATH_MAX.
_PIECE_BYTES = 2048
_DIR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)


def storable(path: str) -> str:
    """``path`` as text every database and message format accepts, reversible by :func:`on_disk`."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        if "\\" not in path or not _ESCAPE.search(path):
            return path
    raw = os.fsencode(path).replace(b"\\", b"\\\\")
    return raw.decode("utf-8", "backslashreplace")


def on_disk(path: str) -> str:
    """The name to open for a stored ``path``: the inverse of :func:`storable`."""
    if "\\" not in path or not _ESCAPE.search(path):
        return path
    out = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(path):
        out += path[pos : match.start()].encode("utf-8", "surrogateescape")
        out += b"\\" if match.group(1) is None else bytes([int(match.group(1), 16)])
        pos = match.end()
    out += path[pos:].encode("utf-8", "surrogateescape")
    return os.fsdecode(bytes(out))


def open_path(path: str, flags: int, mode: int = 0o777) -> int:
    """``os.open(path, flags)``, also for a path longer than PATH_MAX."""
    try:
        return os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
    parent_fd, name = _open_parent(path)
    try:
        return os.open(name, flags, mode, dir_fd=parent_fd)
    finally:
        os.close(parent_fd)


def stat_path(path: str) -> os.stat_result:
    """``os.stat(path)``, also for a path longer than PATH_MAX."""
    try:
        return os.stat(path)
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
    parent_fd, name = _open_parent(path)
    try:
        return os.stat(name, dir_fd=parent_fd)
    finally:
        os.close(parent_fd)


def _open_parent(path: str) -> tuple[int, str]:
    """A descriptor of ``path``'s directory, opened a piece at a time, and the last component."""
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    if not name:
        raise OSError(errno.EISDIR, "no file name", path)
    pieces: list[str] = []
    for part in parent.split("/"):
        if not part:
            continue
        size = len(os.fsencode(part))
        if pieces and len(os.fsencode(pieces[-1])) + 1 + size <= _PIECE_BYTES:
            pieces[-1] += "/" + part
        else:
            pieces.append(part)
    fd = os.open("/", _DIR_FLAGS)
    try:
        for piece in pieces:
            next_fd = os.open(piece, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd, name
