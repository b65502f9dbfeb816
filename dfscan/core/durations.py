"""Durations as people write them: ``90d``, ``12h``, ``2w``, ``30m``, ``45s`` (retention, `dfscan prune`)."""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = ["DurationError", "UNITS", "format_duration", "parse_duration"]

# unit -> seconds; the one table both parsing and printing read.
UNITS = {"w": 7 * 86_400, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION = re.compile(r"\s*(\d{1,9})\s*([wdhms])\s*", re.IGNORECASE)


class DurationError(ValueError):
    """Text that is not a duration like ``90d``."""


def parse_duration(text: str) -> timedelta:
    """``"90d"`` -> 90 days. One number and one unit (w, d, h, m, s); zero is refused."""
    match = _DURATION.fullmatch(text or "")
    if match is None:
        raise DurationError(f"{text!r} is not a duration: write a number and a unit "
                            f"({', '.join(UNITS)}), e.g. 90d, 12h, 2w")
    seconds = int(match.group(1)) * UNITS[match.group(2).lower()]
    if seconds <= 0:
        raise DurationError(f"duration {text!r} must be longer than zero")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The largest whole unit: 90 days -> ``"90d"``, 36 hours -> ``"36h"``."""
    seconds = int(value.total_seconds())
    for unit, size in UNITS.items():
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    raise AssertionError("s divides every whole number of seconds")
