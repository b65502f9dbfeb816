"""File names that are not valid UTF-8.

POSIX file names are bytes; SQL text columns, JSON messages and CSV are
Unicode.  A name that doesn't decode travels and is stored in a reversible
form, with each undecodable byte written as ``\\xNN``; the reader turns it
back into the bytes on disk.  Valid names are left exactly as they are.
"""

from __future__ import annotations

import os
import re

_ESCAPE = re.compile(r"\\x([0-9a-f]{2})")


def storable(path: str) -> str:
    """``path`` as text every database and message format accepts."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    return path


def on_disk(path: str) -> str:
    """The name to open for a stored ``path`` (the inverse of :func:`storable`).

    A stored name containing ``\\xNN`` is ambiguous only if a file is really
    named with those characters, so that literal name wins when it exists.
    """
    if "\\x" not in path or os.path.lexists(path):
        return path
    out = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(path):
        out += path[pos : match.start()].encode("utf-8")
        out.append(int(match.group(1), 16))
        pos = match.end()
    out += path[pos:].encode("utf-8")
    return os.fsdecode(bytes(out))
