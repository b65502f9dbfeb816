"""One frozen configuration object, loaded once and passed down explicitly.

Precedence is CLI option > environment variable > default.  Click reads the
``DFSCAN_*`` variables for the options it declares (``auto_envvar_prefix``);
code that runs without the CLI (Celery workers, Alembic) calls
:func:`from_env`, the only other place the environment is read.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

# DEFAULT_FRAMES is named here too for the modules that take their defaults from the settings.
from dfscan.core.constants import (ALL_PRECISIONS, DEFAULT_FRAMES, DEFAULT_MAX_DECODE_BYTES,  # noqa: F401
                                   DEFAULT_MAX_PIXELS, MAX_FRAMES)

ENV_PREFIX = "DFSCAN_"

DEFAULT_DB_URL = "sqlite:///dfscan.db"
DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Videos the walker takes beside images (dfscan.workers.video.sample samples them).
DEFAULT_VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi")
# Every precision some runtime runs (bf16: --runtime torch only), from the one precision table.
PRECISIONS = ALL_PRECISIONS.names()
# Faces: ``auto`` follows the model's ``input`` (face-crop or whole-image), ``on`` and ``off`` force it.
FACE_MODES = ("auto", "on", "off")
# How an image's verdict comes from its faces' p_fake.
FACE_AGGREGATIONS = ("max", "mean")
# Where batches live from decode to logits (dfscan.workers.scoring.tensors): NumPy on the host, torch tensors on
# the runtime's device, or ``auto`` (the device when the runtime is torch or TensorRT on CUDA, else the host).
BATCH_MODES = ("auto", "host", "device")


class SettingsError(ValueError):
    """A configuration value is invalid; raised before any work starts."""


@dataclass(frozen=True)
class Settings:
    db_url: str = DEFAULT_DB_URL
    model: Path | None = None
    threshold: float | None = None
    batch_size: int = 64
    chunk_size: int = 1024  # paths per chunk; why 1024: docs/distributed.md, "Chunk size"
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    max_pixels: int = DEFAULT_MAX_PIXELS
    # The most bytes one image may take while decoded and converted to RGB (workers.images.decode.decoded_bytes);
    # above it the image is an error row (too-large-decoded), and the face stage holds no more at once.
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES
    read_threads: int = 8
    decode_threads: int = 2
    runtime: str = "auto"
    # TensorRT: the engine precision (None: the best cached, else fp16) and where engines are cached
    # (None: engines/ beside the model).
    precision: str | None = None
    engine_dir: Path | None = None
    decoder: str = "auto"
    batches: str = "auto"  # BATCH_MODES
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
    # A chunk being scored is leased in the database for this long and renewed every
    # ``lease_renew_seconds``; a lease that runs out (the worker's host died) has its
    # chunk re-enqueued by any live worker or producer, long before the visibility timeout.
    lease_seconds: int = 30
    lease_renew_seconds: float = 5.0
    # Workers serve Prometheus metrics on this port when it is set, on this address (loopback
    # unless an operator opens it: the endpoint has no authentication).
    metrics_port: int | None = None
    metrics_bind: str = "127.0.0.1"
    follow_symlinks: bool = True
    # `dfscan serve`: where it listens, the only directories a scan through the API may name,
    # the upload limits, how long the dynamic batcher waits to fill a batch, how long a
    # client may take to send its request, and how often a scan's callback is tried.
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000
    serve_roots: tuple[str, ...] = ()
    max_upload_bytes: int = 32 * 1024 * 1024
    max_upload_files: int = 64
    max_batch_delay_ms: float = 5.0
    request_timeout_s: float = 30.0
    callback_attempts: int = 5
    # Work in flight in `dfscan serve`: scans running at once (each on the server's one model) and queued
    # behind them, uploads in flight per API key and in all (429 with Retry-After past any of them), and
    # the connections uvicorn takes at once (503 past them).
    max_scans: int = 2
    max_queued_scans: int = 100
    max_uploads_per_key: int = 8
    max_uploads: int = 64
    max_connections: int = 512
    # Callbacks reach only public addresses; these hosts, addresses or CIDR networks are allowed too (an
    # internal receiver). Each delivery has a total deadline (connect, send, read), reads at most
    # ``callback_max_response_bytes`` of the answer, and up to ``callback_parallel`` run at once.
    callback_allow: tuple[str, ...] = ()
    callback_deadline_s: float = 10.0
    callback_max_response_bytes: int = 64 * 1024
    callback_parallel: int = 4
    # Where `dfscan serve` answers /metrics, /docs and /openapi.json: None (the default) on its own bind, to admin
    # keys only; "HOST:PORT" on a second listener there, without a key (keep it on a private address), and not on
    # the main bind.
    ops_bind: str | None = None
    # The face stage (dfscan.workers.scoring.face_stage): mode, detector (a name in its table), the most faces
    # scored per image (the largest first), the crop's side as a multiple of the face box, the
    # smallest face worth scoring (pixels of the original image), how faces make the image's
    # p_fake, and the side of the downscaled copy the detector looks at.
    faces: str = "auto"
    face_detector: str = "mtcnn"
    max_faces: int = 16
    face_margin: float = 1.3
    min_face_size: int = 24
    face_aggregation: str = "max"
    face_detect_size: int = 512  # the detector's copy's longer side (docs/faces.md: recall and cost)
    face_detect_min_face: int = 28  # the smallest face looked for on the detector's copy, in its pixels
    # s3:// roots: the endpoint of an S3-compatible store (None: boto3's default, AWS or its
    # AWS_ENDPOINT_URL_S3). Credentials never come from here: boto3's chain (environment, profile, role).
    s3_endpoint_url: str | None = None
    # Videos: their extensions (an empty tuple: images only), frames sampled per video (None: the
    # video model's ``frames``, else DEFAULT_FRAMES), and the time one video may take to sample.
    video_extensions: tuple[str, ...] = DEFAULT_VIDEO_EXTENSIONS
    frames: int | None = None
    video_time_limit_s: float = 60.0
    # Take the verdict of an earlier scan's ``ok`` row with the same model and the same file bytes
    # (content hash) instead of scoring the file again (dfscan.workers.scoring.dedupe).  Copies within a
    # scan are always scored once.
    reuse_verdicts: bool = False
    # Hash banks (dfscan.workers.scoring.hashes): every decoded image and whole video frame gets its PDQ and is
    # matched against the enabled banks; with ``pdq_dihedral`` the seven rotations and mirrors are matched too.
    pdq: bool = True
    pdq_dihedral: bool = False
    # Provenance (dfscan.workers.scoring.provenance): each file's C2PA manifest, IPTC/XMP declarations, generator
    # settings and invisible watermark; a signer chaining to a certificate of ``c2pa_trust_anchors`` (PEM) is trusted.
    provenance: bool = True
    c2pa_trust_anchors: Path | None = None
    # Retention (dfscan.db.retention): `dfscan beat` prunes scans older than this duration ("90d", "12h", "2w";
    # None: never) at ``retention_cron`` (UTC), as `dfscan prune --older-than` does.
    retention: str | None = None
    retention_cron: str = "15 3 * * *"

    def __post_init__(self) -> None:
        self.validate()
        _check_retention(self)

    def __repr__(self) -> str:
        # A logged or printed Settings must not carry the database or broker password.
        from dfscan.core.redact import mask_url

        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("db_url", "broker_url") and value:
                value = mask_url(value)
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"

    def validate(self) -> None:
        _check_trust_anchors(self.c2pa_trust_anchors)
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
        if self.intra_op_threads < 0:
            raise SettingsError(f"thread count must be 0 (all cores) or more, got {self.intra_op_threads}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise SettingsError(f"metrics port must be between 0 and 65535, got {self.metrics_port}")
        if not self.metrics_bind.strip():
            raise SettingsError("the metrics bind address is empty")
        if self.max_attempts < 1:
            raise SettingsError(f"max attempts must be at least 1, got {self.max_attempts}")
        if self.max_outstanding_chunks < 1:
            raise SettingsError("max outstanding chunks must be at least 1")
        if self.visibility_timeout < 1:
            raise SettingsError(f"visibility timeout must be at least 1 s, got {self.visibility_timeout}")
        if not 2 <= self.lease_seconds <= 3600:
            raise SettingsError(f"lease time must be between 2 and 3600 s, got {self.lease_seconds}")
        if not 0 < self.lease_renew_seconds <= self.lease_seconds / 2:
            raise SettingsError(
                f"lease renew interval must be positive and at most half the lease time ({self.lease_seconds} s), "
                f"got {self.lease_renew_seconds}"
            )
        if self.db_retry_seconds < 0:
            raise SettingsError(f"database retry time must not be negative, got {self.db_retry_seconds}")
        if not self.queue:
            raise SettingsError("the queue name is empty")
        if not 0 <= self.serve_port <= 65535:
            raise SettingsError(f"serve port must be between 0 and 65535, got {self.serve_port}")
        if self.max_upload_bytes < 1 or self.max_upload_files < 1:
            raise SettingsError("upload limits (bytes, files) must be at least 1")
        if not 0 <= self.max_batch_delay_ms <= 10_000:
            raise SettingsError(f"batch delay must be between 0 and 10000 ms, got {self.max_batch_delay_ms}")
        if self.request_timeout_s <= 0:
            raise SettingsError(f"request timeout must be positive, got {self.request_timeout_s}")
        if self.callback_attempts < 1:
            raise SettingsError(f"callback attempts must be at least 1, got {self.callback_attempts}")
        _check_ranges(self, _SERVE_LIMITS)
        _check_callbacks(self)
        if self.ops_bind is not None:
            parse_bind(self.ops_bind)
        for root in self.serve_roots:
            if not os.path.isabs(root):
                raise SettingsError(f"serve root {root!r} must be an absolute path")
        for name, allowed in (("batches", BATCH_MODES), ("faces", FACE_MODES), ("face_aggregation", FACE_AGGREGATIONS)):
            if getattr(self, name) not in allowed:
                raise SettingsError(f"{name.replace('_', ' ')} must be one of {', '.join(allowed)}, "
                                    f"got {getattr(self, name)!r}")
        _check_faces(self)
        if self.s3_endpoint_url is not None:
            _check_endpoint(self.s3_endpoint_url)
        for ext in (*self.extensions, *self.video_extensions):
            if not ext.startswith(".") or len(ext) < 2:
                raise SettingsError(f"extension {ext!r} must look like '.jpg'")
        both = set(self.extensions) & set(self.video_extensions)
        if both:
            raise SettingsError(f"extension(s) {', '.join(sorted(both))} are both image and video extensions")
        if self.frames is not None and not 1 <= self.frames <= MAX_FRAMES:
            raise SettingsError(f"frames per video must be between 1 and {MAX_FRAMES}, got {self.frames}")
        if not 0 < self.video_time_limit_s <= 86_400:
            raise SettingsError(f"video time limit must be between 0 and 86400 s, got {self.video_time_limit_s}")

    @property
    def scan_extensions(self) -> tuple[str, ...]:
        """What the walker takes: image and video extensions."""
        return (*self.extensions, *self.video_extensions)

    def with_(self, **changes: Any) -> "Settings":
        """A copy with ``changes`` applied; ``None`` values keep the current one."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _check_endpoint(url: str) -> None:
    """An http(s) URL with a host and no user:password (the endpoint is kept in the audit record)."""
    from urllib.parse import urlsplit

    from dfscan.core.redact import mask_url

    if "@" in url:  # user:password@ (the password may hold "/", so this is checked before any parsing)
        raise SettingsError("S3 endpoint must not hold credentials: give them through the AWS chain "
                            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance role)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise SettingsError(f"S3 endpoint {mask_url(url)!r} is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"S3 endpoint {mask_url(url)!r} must be an http:// or https:// URL with a host")


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


def parse_video_extensions(text: str | tuple[str, ...] | None) -> tuple[str, ...] | None:
    """Like :func:`parse_extensions`, but ``""`` or ``"none"`` turns videos off (images only)."""
    if text is None:
        return None
    if isinstance(text, str) and text.strip().lower() in ("", "none"):
        return ()
    return parse_extensions(text)


def parse_allow(text: str | tuple[str, ...] | None) -> tuple[str, ...] | None:
    """``"hooks.internal, 10.1.0.0/16"`` (comma-separated) -> ``("hooks.internal", "10.1.0.0/16")``."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    return tuple(dict.fromkeys(item.strip().lower() for item in items if item.strip()))


_HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*\.?")


def _check_faces(settings: "Settings") -> None:
    """The face stage's limits."""
    if settings.max_faces < 1:
        raise SettingsError(f"max faces must be at least 1, got {settings.max_faces}")
    if not 1.0 <= settings.face_margin <= 4.0:
        raise SettingsError(f"face margin must be between 1.0 and 4.0 (times the face box), got {settings.face_margin}")
    if settings.min_face_size < 1:
        raise SettingsError(f"min face size must be at least 1 pixel, got {settings.min_face_size}")
    if not 64 <= settings.face_detect_size <= 4096:
        raise SettingsError(f"face detect size must be between 64 and 4096 pixels, got {settings.face_detect_size}")
    if not 12 <= settings.face_detect_min_face <= settings.face_detect_size:
        raise SettingsError("face detect min face must be between 12 pixels (MTCNN's window) and the detect size, "
                            f"got {settings.face_detect_min_face}")


def _check_callbacks(settings: Settings) -> None:
    """The callback allow-list, deadline, response cap and parallel deliveries."""
    for entry in settings.callback_allow:
        _check_allow_entry(entry)
    if not 0 < settings.callback_deadline_s <= 300:
        raise SettingsError(f"callback deadline must be between 0 and 300 s, got {settings.callback_deadline_s}")
    if not 1024 <= settings.callback_max_response_bytes <= 16 * 1024 * 1024:
        raise SettingsError("callback response cap must be between 1024 and 16777216 bytes, "
                            f"got {settings.callback_max_response_bytes}")
    if not 1 <= settings.callback_parallel <= 64:
        raise SettingsError(f"parallel callback deliveries must be between 1 and 64, got {settings.callback_parallel}")


def _check_trust_anchors(path: Path | None) -> None:
    """None, or a readable file of PEM certificates (--c2pa-trust-anchors)."""
    if path is None:
        return
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise SettingsError(f"C2PA trust anchors {str(path)!r}: {exc.strerror or exc} "
                            f"(--c2pa-trust-anchors, {env_name('c2pa_trust_anchors')})") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise SettingsError(f"C2PA trust anchors {str(path)!r} hold no PEM certificate "
                            f"(--c2pa-trust-anchors, {env_name('c2pa_trust_anchors')})")


def _check_retention(settings: Settings) -> None:
    """A retention duration that parses, and a cron of five fields (beat checks each field)."""
    from dfscan.core.durations import DurationError, parse_duration

    if settings.retention is not None:
        try:
            parse_duration(settings.retention)
        except DurationError as exc:
            raise SettingsError(f"retention: {exc} ({env_name('retention')})") from None
    if len(settings.retention_cron.split()) != 5:
        raise SettingsError(f"retention cron {settings.retention_cron!r} needs 5 fields (minute hour day-of-month "
                            f"month day-of-week; {env_name('retention_cron')})")


def _check_allow_entry(entry: str) -> None:
    """A callback allow-list entry: an address, a CIDR network, or a host name."""
    import ipaddress

    try:
        ipaddress.ip_network(entry.strip("[]"), strict=False)
        return
    except ValueError:
        pass
    if "/" in entry or ":" in entry or not _HOST_NAME.fullmatch(entry.lower()):
        raise SettingsError(f"callback allow-list entry {entry!r} is not a host name, an address or a CIDR network")


def parse_roots(text: str | tuple[str, ...] | None) -> tuple[str, ...] | None:
    """``"/data/a:/data/b"`` (``os.pathsep``-separated, like PATH) -> ``("/data/a", "/data/b")``."""
    if text is None:
        return None
    items = text.split(os.pathsep) if isinstance(text, str) else list(text)
    return tuple(dict.fromkeys(item.strip() for item in items if item.strip()))


_CONVERTERS = {
    "model": Path,
    "engine_dir": Path,
    "threshold": float,
    "batch_size": int,
    "chunk_size": int,
    "max_pixels": int,
    "max_decode_bytes": int,
    "read_threads": int,
    "decode_threads": int,
    "intra_op_threads": int,
    "max_outstanding_chunks": int,
    "max_attempts": int,
    "metrics_port": int,
    "visibility_timeout": int,
    "lease_seconds": int,
    "lease_renew_seconds": float,
    "db_retry_seconds": float,
    "max_faces": int,
    "face_margin": float,
    "min_face_size": int,
    "face_detect_size": int,
    "face_detect_min_face": int,
    "extensions": parse_extensions,
    "video_extensions": parse_video_extensions,
    "frames": int,
    "video_time_limit_s": float,
    "serve_port": int,
    "serve_roots": parse_roots,
    "max_upload_bytes": int,
    "max_upload_files": int,
    "max_batch_delay_ms": float,
    "request_timeout_s": float,
    "callback_attempts": int,
    "max_scans": int,
    "max_queued_scans": int,
    "max_uploads_per_key": int,
    "max_uploads": int,
    "max_connections": int,
    "callback_allow": parse_allow,
    "callback_deadline_s": float,
    "callback_max_response_bytes": int,
    "callback_parallel": int,
    "follow_symlinks": lambda s: s.strip().lower() not in ("0", "false", "no", "off"),
    "reuse_verdicts": lambda s: s.strip().lower() not in ("0", "false", "no", "off"),
    "pdq": lambda s: s.strip().lower() not in ("0", "false", "no", "off"),
    "pdq_dihedral": lambda s: s.strip().lower() not in ("0", "false", "no", "off"),
    "provenance": lambda s: s.strip().lower() not in ("0", "false", "no", "off"),
    "c2pa_trust_anchors": Path,
}


def parse_bind(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9000`` for IPv6) as (host, port); a port between 1 and 65535."""
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SettingsError(f"bind address must be HOST:PORT with a port between 1 and 65535, got {value!r}")
    return host, int(port)


# `dfscan serve`'s limits on work in flight: (setting, lowest, highest).
_SERVE_LIMITS = (("max_scans", 1, 64), ("max_queued_scans", 0, 100_000), ("max_uploads_per_key", 1, 10_000),
                 ("max_uploads", 1, 10_000), ("max_connections", 16, 100_000), ("max_decode_bytes", 1 << 20, 1 << 40))


def _check_ranges(settings: Settings, ranges: tuple[tuple[str, int, int], ...]) -> None:
    """Each setting named in ``ranges`` between its lowest and highest value, else a message naming its option."""
    for name, low, high in ranges:
        value = getattr(settings, name)
        if not low <= value <= high:
            raise SettingsError(f"{name.replace('_', ' ')} must be between {low} and {high}, got {value} "
                                f"(--{name.replace('_', '-')}, {env_name(name)})")


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
