"""One frozen configuration object, loaded once and passed down explicitly.

Precedence is CLI option > environment variable > default.  Click reads the
``DFSCAN_*`` variables for the options it declares (``auto_envvar_prefix``);
code that runs without the CLI (Celery workers, Alembic) calls
:func:`from_env`, the only other place the environment is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "DFSCAN_"

DEFAULT_DB_URL = "sqlite:///dfscan.db"
DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Pillow's own default limit (about 89 megapixels); past it an image is refused
# from its header, before any pixel is decoded.
DEFAULT_MAX_PIXELS = 89_478_485


PRECISIONS = ("fp32", "fp16", "int8")
# Faces: ``auto`` follows the model's ``input`` (face-crop or whole-image), ``on`` and ``off`` force it.
FACE_MODES = ("auto", "on", "off")
# How an image's verdict comes from its faces' p_fake.
FACE_AGGREGATIONS = ("max", "mean")


class SettingsError(ValueError):
    """A configuration value is invalid; raised before any work starts."""


@dataclass(frozen=True)
class Settings:
    db_url: str = DEFAULT_DB_URL
    model: Path | None = None
    threshold: float | None = None
    batch_size: int = 64
    chunk_size: int = 256
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    max_pixels: int = DEFAULT_MAX_PIXELS
    read_threads: int = 8
    decode_threads: int = 2
    runtime: str = "auto"
    # TensorRT: the engine precision (None: the best cached, else fp16) and where engines are cached
    # (None: engines/ beside the model).
    precision: str | None = None
    engine_dir: Path | None = None
    decoder: str = "auto"
    intra_op_threads: int = 0
    broker_url: str | None = None
    max_outstanding_chunks: int = 64
    max_attempts: int = 3
    # Distributed mode: the Celery queue chunks go to, how long Redis waits
    # before handing an unacknowledged chunk to another worker (longer than
    # the slowest chunk), and how long a database outage is retried before a
    # write gives up.
    queue: str = "dfscan"
    visibility_timeout: int = 3600
    db_retry_seconds: float = 120.0
    # Workers serve Prometheus metrics on this port when it is set.
    metrics_port: int | None = None
    follow_symlinks: bool = True
    # The face stage (dfscan.workers.faces): mode, detector (a name in its table), the most faces
    # scored per image (the largest first), the crop's side as a multiple of the face box, the
    # smallest face worth scoring (pixels of the original image), how faces make the image's
    # p_fake, and the side of the downscaled copy the detector looks at.
    faces: str = "auto"
    face_detector: str = "mtcnn"
    max_faces: int = 16
    face_margin: float = 1.3
    min_face_size: int = 24
    face_aggregation: str = "max"
    face_detect_size: int = 640

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise SettingsError(f"threshold must be between 0 and 1, got {self.threshold}")
        if not 1 <= self.batch_size <= 4096:
            raise SettingsError(f"batch size must be between 1 and 4096, got {self.batch_size}")
        if self.chunk_size < 1:
            raise SettingsError(f"chunk size must be at least 1, got {self.chunk_size}")
        if self.max_pixels < 1:
            raise SettingsError(f"max pixels must be positive, got {self.max_pixels}")
        if self.read_threads < 1 or self.decode_threads < 1:
            raise SettingsError("read and decode thread counts must be at least 1")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise SettingsError(f"unknown precision {self.precision!r}; known: {', '.join(PRECISIONS)}")
        if self.max_attempts < 1:
            raise SettingsError(f"max attempts must be at least 1, got {self.max_attempts}")
        if self.max_outstanding_chunks < 1:
            raise SettingsError("max outstanding chunks must be at least 1")
        if self.visibility_timeout < 1:
            raise SettingsError(f"visibility timeout must be at least 1 s, got {self.visibility_timeout}")
        if self.db_retry_seconds < 0:
            raise SettingsError(f"database retry time must not be negative, got {self.db_retry_seconds}")
        if not self.queue:
            raise SettingsError("the queue name is empty")
        if self.faces not in FACE_MODES:
            raise SettingsError(f"faces must be one of {', '.join(FACE_MODES)}, got {self.faces!r}")
        if self.face_aggregation not in FACE_AGGREGATIONS:
            raise SettingsError(
                f"face aggregation must be one of {', '.join(FACE_AGGREGATIONS)}, got {self.face_aggregation!r}"
            )
        if self.max_faces < 1:
            raise SettingsError(f"max faces must be at least 1, got {self.max_faces}")
        if not 1.0 <= self.face_margin <= 4.0:
            raise SettingsError(f"face margin must be between 1.0 and 4.0 (times the face box), got {self.face_margin}")
        if self.min_face_size < 1:
            raise SettingsError(f"min face size must be at least 1 pixel, got {self.min_face_size}")
        if not 64 <= self.face_detect_size <= 4096:
            raise SettingsError(f"face detect size must be between 64 and 4096 pixels, got {self.face_detect_size}")
        for ext in self.extensions:
            if not ext.startswith(".") or len(ext) < 2:
                raise SettingsError(f"extension {ext!r} must look like '.jpg'")

    def with_(self, **changes: Any) -> "Settings":
        """A copy with ``changes`` applied; ``None`` values keep the current one."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def parse_extensions(text: str | tuple[str, ...] | None) -> tuple[str, ...] | None:
    """``"jpg,.PNG"`` -> ``(".jpg", ".png")``; matching is case-insensitive."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        item = item.strip().lower()
        if item:
            out.append(item if item.startswith(".") else "." + item)
    if not out:
        raise SettingsError("the extension allow-list is empty")
    return tuple(dict.fromkeys(out))


_CONVERTERS = {
    "model": Path,
    "engine_dir": Path,
    "threshold": float,
    "batch_size": int,
    "chunk_size": int,
    "max_pixels": int,
    "read_threads": int,
    "decode_threads": int,
    "intra_op_threads": int,
    "max_outstanding_chunks": int,
    "max_attempts": int,
    "metrics_port": int,
    "visibility_timeout": int,
    "db_retry_seconds": float,
    "max_faces": int,
    "face_margin": float,
    "min_face_size": int,
    "face_detect_size": int,
    "extensions": parse_extensions,
    "follow_symlinks": lambda s: s.strip().lower() not in ("0", "false", "no", "off"),
}


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def from_env(environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from ``DFSCAN_*`` variables, then ``overrides`` (non-None) on top."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = environ.get(env_name(f.name))
        if raw is None or raw == "":
            continue
        convert = _CONVERTERS.get(f.name, str)
        try:
            values[f.name] = convert(raw)
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"{env_name(f.name)}={raw!r}: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)
