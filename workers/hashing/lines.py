"""Bank files: one hash a line, optionally with a reference and a label, comma-separated.

``HASH[,REF[,LABEL]]``, as ThreatExchange's and HMA's PDQ exports write
them (a further field is kept in the label; a first line ``hash,...`` is a
header; blank lines and lines starting with ``#`` are skipped).  Each bad
line is reported with its number; :func:`parse_bank_lines` yields it and
goes on, and the caller stops or not (``--strict``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .errors import BadHash
from .pdq import check_hash

__all__ = ["BadLine", "parse_bank_lines"]


@dataclass(frozen=True)
class BadLine:
    lineno: int
    message: str

    def __str__(self) -> str:
        return f"line {self.lineno}: {self.message}"


def parse_bank_lines(lines: Iterable[str], kind: str = "pdq"
                     ) -> Iterator[tuple[str, str | None, str | None] | BadLine]:
    """Each entry of a bank file as ``(hash, ref, label)``, or a :class:`BadLine` where it is malformed."""
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip().lstrip("\ufeff")
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",", 2)]
        if lineno == 1 and fields[0].lower() in ("hash", "pdq", "signal", "md5", "sha256"):
            continue
        try:
            value = check_hash(fields[0], kind)
        except BadHash as exc:
            yield BadLine(lineno, str(exc))
            continue
        ref = fields[1] if len(fields) > 1 and fields[1] else None
        label = fields[2] if len(fields) > 2 and fields[2] else None
        yield value, ref, label
