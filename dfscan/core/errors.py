"""Errors and error text shared by every layer: an unknown name, and an exception's first line."""

from __future__ import annotations


class UnknownName(KeyError, ValueError):
    """No entry of that name in a :class:`~dfscan.core.registry.Registry`; the message lists the known ones.

    A ``KeyError`` because a registry is looked up like a mapping, a ``ValueError``
    because the name usually comes from the user. Each registry raises its own
    subclass (``UnknownRuntime``, ``UnknownDecoder``, ...), so callers keep
    catching the class of their package.
    """

    def __str__(self) -> str:
        # KeyError's own __str__ shows the message quoted, as a key's repr.
        return str(self.args[0]) if self.args else ""


def first_line(exc: BaseException, limit: int | None = 200) -> str:
    """The first line of ``str(exc)`` (stripped), else the exception's type name; cut to ``limit`` characters.

    The one rule for an error's short text in a result row, a log line or a
    message; ``limit`` None keeps the whole line.
    """
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if limit is None else text[:limit]
