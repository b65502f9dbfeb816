"""Walk roots and path lists, yielding image paths one at a time.

The walker streams: it never builds the archive's path list.  ``os.scandir``
is used depth-first with an explicit stack of open directories, so memory
grows with the depth of the tree, not its size.  Each directory is opened
relative to its parent's descriptor (``dir_fd``), so a branch whose paths
exceed PATH_MAX is walked too, and the reader opens its files the same way
(:func:`scanner.paths.open_path`).  It follows symlinks
(a common way to assemble archives) but remembers each directory's
``(st_dev, st_ino)`` on the current branch, so loops end.  Told not to
(``follow_symlinks=False``: every scan the service starts), it follows none,
not even one swapped in after the roots were checked: each root is opened with
no link on its path (:mod:`scanner.confine`) and each directory below it with
``O_NOFOLLOW``.  Only regular files
with an image name are yielded, including those that will fail later
(vanished, unreadable, or not regular files such as a FIFO named ``x.jpg``):
the pipeline's reader turns each into an error row without opening it for a
blocking read, which is how "nothing is lost" holds.  A directory that can't be
listed is reported through ``on_skip``: its files can't be named, so the caller
reports it as a warning.

A root or a path-list line that is an ``s3://bucket/prefix`` URL is an
object-storage root: its keys are listed page by page (:mod:`scanner.objects`).
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from dfscan.scanner.confine import open_confined
from dfscan.scanner.errors import OutsideRoot, PathListError, RootNotFound
from dfscan.scanner.objects import is_object_url, object_store, walk_objects

SkipHook = Callable[[str, str], None]


@dataclass(frozen=True)
class WalkOptions:
    extensions: tuple[str, ...]
    follow_symlinks: bool = True
    # Where s3:// roots are listed (None: boto3's default endpoint).
    s3_endpoint_url: str | None = None

    def wanted(self, name: str) -> bool:
        return os.path.splitext(name)[1].lower() in self.extensions


def check_roots(roots: Iterable[str | os.PathLike[str]], s3_endpoint_url: str | None = None, *,
                resolve: bool = False) -> list[str]:
    """Absolute paths of ``roots``; raises :class:`RootNotFound` for any that is missing.

    ``resolve`` gives their real paths (links resolved now, at the check): a
    scan that follows no link is confined to them (:mod:`scanner.confine`).
    An ``s3://`` root is kept as it is once its bucket answers (and its prefix holds objects).
    """
    out = []
    for root in roots:
        if is_object_url(os.fspath(root)):
            out.append(object_store(s3_endpoint_url).check_root(os.fspath(root)))
            continue
        path = (os.path.realpath if resolve else os.path.abspath)(os.fspath(root))
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise RootNotFound(f"{root}: no such file or directory") from None
        except OSError as exc:
            raise RootNotFound(f"{root}: {exc.strerror or exc}") from None
        if stat.S_ISDIR(st.st_mode) and not os.access(path, os.R_OK | os.X_OK):
            raise RootNotFound(f"{root}: directory is not readable")
        out.append(path)
    return out


def walk(
    roots: Iterable[str | os.PathLike[str]],
    options: WalkOptions,
    on_skip: SkipHook | None = None,
) -> Iterator[str]:
    """Yield absolute paths of image files under ``roots`` in a stable order.

    A root that is not a directory is yielded whatever its extension (the
    user named it).  Directories are walked recursively in
    sorted order, which makes chunks reproducible.
    """
    for root in check_roots(roots, options.s3_endpoint_url):
        if is_object_url(root):
            yield from walk_objects(root, options.wanted, options.s3_endpoint_url, on_skip)
            continue
        st = os.stat(root)
        if not stat.S_ISDIR(st.st_mode):
            yield root  # the reader opens it (with no link on its path, when confined)
            continue
        first = _open_root(root, options, on_skip)
        if first is not None:
            yield from _walk_dir(root, first, options, on_skip)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)


def _open_root(root: str, options: WalkOptions,
               on_skip: SkipHook | None) -> tuple[int, Iterator[os.DirEntry[str]]] | None:
    """The root directory's descriptor and entries; not following links, reached with none on its path."""
    if options.follow_symlinks:
        return _open_dir(root, root, None, on_skip)
    try:
        fd = open_confined(root, (root,), _DIR_FLAGS)
    except OutsideRoot:
        _skip(on_skip, root, "a symbolic link on the root's path (swapped in after the check): not followed")
        return None
    except OSError as exc:
        _skip(on_skip, root, f"directory not readable: {exc.strerror or exc}")
        return None
    return _listed(fd, root, on_skip)


def _skip(on_skip: SkipHook | None, path: str, why: str) -> None:
    if on_skip is not None:
        on_skip(path, why)


@dataclass
class _OpenDir:
    """A directory on the current branch: its path, its descriptor, its entries still to visit."""

    path: str
    fd: int
    entries: Iterator[os.DirEntry[str]]
    ident: tuple[int, int]


def _walk_dir(root: str, first: tuple[int, Iterator[os.DirEntry[str]]], options: WalkOptions,
              on_skip: SkipHook | None) -> Iterator[str]:
    # Directories are opened relative to their parent's descriptor and listed and
    # stat'ed through it, so a branch deeper than PATH_MAX is walked like any other:
    # only the path strings grow, never a name handed to the kernel.
    root_st = os.fstat(first[0])
    ident = (root_st.st_dev, root_st.st_ino)
    stack = [_OpenDir(root, first[0], first[1], ident)]
    on_branch: set[tuple[int, int]] = {ident}
    try:
        while stack:
            top = stack[-1]
            entry = next(top.entries, None)
            if entry is None:
                stack.pop()
                os.close(top.fd)
                on_branch.discard(top.ident)
                continue
            path = os.path.join(top.path, entry.name)
            try:
                is_link = entry.is_symlink()
                if is_link and not options.follow_symlinks:
                    continue
                # Not following: a link swapped in since the listing stays a link (its name may become an error row).
                st = entry.stat(follow_symlinks=options.follow_symlinks)
            except OSError:
                # A dangling symlink or a file that vanished between listing and stat:
                # yield image names so that they end as error rows, skip the rest.
                if options.wanted(entry.name):
                    yield path
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in on_branch:
                    continue  # a symlink loop
                opened = _open_dir(entry.name, path, top.fd, on_skip, follow=options.follow_symlinks)
                if opened is not None:
                    on_branch.add(key)
                    stack.append(_OpenDir(path, opened[0], opened[1], key))
            elif options.wanted(entry.name):
                yield path
    finally:
        for left in stack:
            os.close(left.fd)


def _open_dir(name: str, path: str, parent_fd: int | None, on_skip: SkipHook | None,
              follow: bool = True) -> tuple[int, Iterator[os.DirEntry[str]]] | None:
    """A directory's descriptor and its entries sorted by name, or None (reported) if it can't be listed.

    Sorting holds one directory's names at a time, never the tree's.  The
    entries stat through the descriptor, which stays open while they are used.
    Not ``follow``: a directory swapped for a link since it was stat'ed is not opened.
    """
    try:
        fd = os.open(name, _DIR_FLAGS | (0 if follow else os.O_NOFOLLOW), dir_fd=parent_fd)
    except OSError as exc:
        _skip(on_skip, path, f"directory not readable: {exc.strerror or exc}")
        return None
    return _listed(fd, path, on_skip)


def _listed(fd: int, path: str, on_skip: SkipHook | None) -> tuple[int, Iterator[os.DirEntry[str]]] | None:
    """``fd`` and its entries sorted by name; None (``fd`` closed, reported) if it can't be listed."""
    try:
        with os.scandir(fd) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        os.close(fd)
        _skip(on_skip, path, f"directory not readable: {exc.strerror or exc}")
        return None
    return fd, iter(entries)


def read_path_list(source: str | os.PathLike[str], stdin: IO[str] | None = None) -> Iterator[str]:
    """Paths from a file (one per line, ``-`` for stdin); blank lines and ``#`` comments skipped.

    Relative paths are taken relative to the current directory; ``s3://`` URLs are kept as they are.  Lines are
    streamed, so a list of a hundred million paths costs no memory.
    """
    if os.fspath(source) == "-":
        handle = stdin if stdin is not None else sys.stdin
        yield from _lines(handle)
        return
    try:
        handle = open(source, encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise PathListError(f"{source}: {exc.strerror or exc}") from None
    with handle:
        yield from _lines(handle)


def _lines(handle: IO[str]) -> Iterator[str]:
    for line in handle:
        line = line.rstrip("\r\n")
        if line.strip() and not line.lstrip().startswith("#"):
            yield line if is_object_url(line) else os.path.abspath(line)


def count_files(roots: Iterable[str], options: WalkOptions) -> int:
    """How many paths :func:`walk` would yield: the progress bar's total."""
    return sum(1 for _ in walk(roots, options))

