"""Reads that stay under a scan's roots: files opened with no symbolic link anywhere on their path.

A scan that doesn't follow symbolic links (every scan the service starts, and
``dfscan scan --no-follow-symlinks``) has its roots recorded as real paths
(:func:`~dfscan.scanner.walker.check_roots` with ``resolve``).  The roots are
checked when the scan starts, but its files are read later, perhaps by another
machine: a directory swapped for a link in the meantime would lead the read out
of them.  So a file under such a root is opened one component at a time from
``/`` with ``O_NOFOLLOW`` (:func:`open_confined`): a link anywhere on the path,
the root's own components included, raises :class:`~dfscan.scanner.errors.OutsideRoot`
instead of being followed.  The walk opens its directories the same way.

Paths under none of the roots (a path list's lines) are opened as before, and
``s3://`` objects are never confined (object keys have no links).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from dfscan.scanner.errors import OutsideRoot
from dfscan.scanner.objects import is_object_url
from dfscan.scanner.paths import on_disk, open_path, stat_path

__all__ = ["confined_roots", "open_confined", "root_of", "roots_from_record", "stat_confined"]

# Directories on the way: O_PATH needs only the right to pass through them, as path lookup does.
_STEP_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
# What open() answers for a link met with O_NOFOLLOW: ELOOP (Linux), EMLINK (FreeBSD), ENOTDIR (with O_PATH).
_LINK_ERRNOS = frozenset({errno.ELOOP, errno.EMLINK, errno.ENOTDIR})

StatCheck = Callable[[os.stat_result], None]


def confined_roots(roots: Iterable[str], follow_symlinks: bool) -> tuple[str, ...] | None:
    """The roots a scan's reads stay under: its local roots when it follows no link (None: not confined)."""
    if follow_symlinks:
        return None
    local = tuple(os.path.normpath(r) for r in roots if not is_object_url(r))
    return local or None


def roots_from_record(walk: dict[str, Any] | None) -> tuple[str, ...] | None:
    """:func:`confined_roots` of a scan's recorded walk (the audit record's ``walk``; None: not confined)."""
    if not walk:
        return None
    return confined_roots((on_disk(r) for r in walk.get("roots", ())), bool(walk.get("follow_symlinks", True)))


def root_of(path: str, roots: Sequence[str] | None) -> str | None:
    """The root ``path`` lies under (lexically, ``..`` resolved first), or None."""
    if not roots:
        return None
    path = os.path.normpath(path)
    for root in roots:
        if path == root or path.startswith(root.rstrip("/") + "/"):
            return root
    return None


def open_confined(path: str, roots: Sequence[str] | None, flags: int, check: StatCheck | None = None) -> int:
    """``os.open(path, flags)``; under one of ``roots``, with no symbolic link followed on the way.

    ``check`` sees the file's ``lstat`` before it is opened and may raise (a
    device or FIFO is then never opened).  Raises :class:`OutsideRoot` for a
    link on a confined path, and ``OSError`` as ``os.open`` would.
    """
    if root_of(path, roots) is None:
        if check is not None:
            check(stat_path(path))
        return open_path(path, flags)
    parent, name = _parent(path)
    try:
        st = _lstat(parent, name, path)
        if check is not None:
            check(st)
        return _step(parent, name, flags | os.O_NOFOLLOW, path)
    finally:
        os.close(parent)


def stat_confined(path: str, roots: Sequence[str] | None) -> os.stat_result:
    """``os.stat(path)``; under one of ``roots``, the file reached with no link followed (:class:`OutsideRoot`)."""
    if root_of(path, roots) is None:
        return stat_path(path)
    parent, name = _parent(path)
    try:
        return _lstat(parent, name, path)
    finally:
        os.close(parent)


def _parent(path: str) -> tuple[int, str]:
    """A descriptor of ``path``'s directory, reached from ``/`` one component at a time, and the last name."""
    parts = [p for p in os.path.normpath(path).split("/") if p]
    if not parts:
        raise OSError(errno.EISDIR, "no file name", path)
    fd = os.open("/", _STEP_FLAGS)
    try:
        for part in parts[:-1]:
            next_fd = _step(fd, part, _STEP_FLAGS, path)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


def _step(fd: int, name: str, flags: int, path: str) -> int:
    try:
        return os.open(name, flags, dir_fd=fd)
    except OSError as exc:
        if exc.errno in _LINK_ERRNOS:
            _lstat(fd, name, path)  # raises OutsideRoot when the name is a link
        raise


def _lstat(fd: int, name: str, path: str) -> os.stat_result:
    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        raise OutsideRoot(f"{path}: the path goes through a symbolic link ({name}), which this scan does not follow")
    return st
