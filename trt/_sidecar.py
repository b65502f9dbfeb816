"""What each field of a sidecar (``model_info.json``) may hold: one validator per key, in one table.

A validator takes the raw JSON value and gives the value :class:`~dfscan.trt.model_info.ModelInfo`
takes, or raises :class:`_Bad` saying what the value must be. The numbers are checked for
what they do, not only their type: each one divides or shifts every input or logit, and a
NaN, an infinity or a denormal there makes every probability NaN (which no threshold catches).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dfscan.core.constants import MAX_FRAMES

# What a sidecar's numbers may be.  Temperature scaling divides logits: calibration
# gives values near 1; below 0.01 a logit of 10 is already e^1000 (overflow), and
# above 100 every probability is 0.5.  Mean and std apply to pixels scaled to 0..1.
TEMPERATURE_RANGE = (0.01, 100.0)
MEAN_RANGE = (-1.0, 2.0)
STD_RANGE = (1e-3, 10.0)
# What the model was trained on: whole images resized to its input, or face crops
# (``dfscan scan --faces auto`` follows this). A sidecar without it is a whole-image model.
MODEL_INPUTS = ("whole-image", "face-crop")

SHA256 = re.compile(r"[0-9a-f]{64}")


class _Bad(Exception):
    """A field's value is not what it must be; ``want`` says what it must be."""

    def __init__(self, want: str) -> None:
        super().__init__(want)
        self.want = want


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _is_num(value) and math.isfinite(value)


def hex_sha256(value: Any) -> str:
    if not isinstance(value, str) or not SHA256.fullmatch(value):
        raise _Bad("a hex SHA-256")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad("a string")
    return value


def _classes(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(c, str) and c for c in value):
        raise _Bad("a list of at least two class names")
    return tuple(value)


def _input_size(value: Any) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2 or not all(_is_int(v) and v > 0 for v in value):
        raise _Bad("[height, width] in pixels")
    return (value[0], value[1])


def _three_between(low: float, high: float) -> Callable[[Any], tuple[float, ...]]:
    """Mean or std: three finite numbers within [low, high] (pixels scaled to 0..1)."""

    def check(value: Any) -> tuple[float, ...]:
        if not isinstance(value, list) or len(value) != 3 or not all(_finite(v) for v in value):
            raise _Bad("a list of three finite numbers")
        if not all(low <= v <= high for v in value):
            raise _Bad(f"three numbers between {low:g} and {high:g} (pixels scaled to 0..1)")
        return tuple(float(v) for v in value)

    return check


def _threshold(value: Any) -> float:
    if not _finite(value) or not 0.0 <= value <= 1.0:
        raise _Bad("a number between 0 and 1")
    return float(value)


def _temperature(value: Any) -> float:
    low, high = TEMPERATURE_RANGE
    if not _finite(value) or not low <= value <= high:
        raise _Bad(f"a number between {low:g} and {high:g}")
    return float(value)


def _model_input(value: Any) -> str:
    if value not in MODEL_INPUTS:
        raise _Bad(" or ".join(repr(v) for v in MODEL_INPUTS))
    return value


def _integer(value: Any) -> int:
    if not _is_int(value):
        raise _Bad("an integer")
    return value


def _file_name(value: Any) -> str:
    """A file beside the model: a bare name, never a path that leaves the folder."""
    if not isinstance(value, str) or not value or Path(value).name != value or value in (".", ".."):
        raise _Bad("the file name of an ONNX model beside this one")
    return value


def _frames(value: Any) -> int:
    if not _is_int(value) or not 1 <= value <= MAX_FRAMES:
        raise _Bad(f"a whole number of frames between 1 and {MAX_FRAMES}")
    return value


# key -> (validator, whether ModelInfo takes the value; the others are only checked), in the order
# they are checked (the first bad one is reported). "sha256" is checked before these, with the model's.
FIELDS: dict[str, tuple[Callable[[Any], Any], bool]] = {
    "architecture": (_string, True),
    "created_at": (_string, True),
    "classes": (_classes, True),
    "input_size": (_input_size, True),
    "mean": (_three_between(*MEAN_RANGE), True),
    "std": (_three_between(*STD_RANGE), True),
    "threshold": (_threshold, True),
    "temperature": (_temperature, True),
    "input": (_model_input, True),
    "opset": (_integer, False),
    "video_model": (_file_name, True),
    "video_model_sha256": (hex_sha256, False),
    "frames": (_frames, True),
}


def check_fields(raw: dict[str, Any], bad: Callable[[str, str], Exception]) -> dict[str, Any]:
    """The values of ``raw``'s known fields, checked; ``bad(key, want)`` makes the error for a wrong one."""
    fields: dict[str, Any] = {}
    for key, (validate, kept) in FIELDS.items():
        if key not in raw:
            continue
        try:
            value = validate(raw[key])
        except _Bad as exc:
            raise bad(key, exc.want) from None
        if kept:
            fields[key] = value
    return fields


def check_sha256(raw: dict[str, Any], bad: Callable[[str, str], Exception]) -> str | None:
    """The sidecar's ``sha256`` (None without one), checked to be a hex SHA-256."""
    if "sha256" not in raw:
        return None
    try:
        return hex_sha256(raw["sha256"])
    except _Bad as exc:
        raise bad("sha256", exc.want) from None
