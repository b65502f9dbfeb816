"""What every command shares: the options that map to :class:`~dfscan.core.settings.Settings`, error reporting, signals.

Each shared option is declared once here. Its environment variable is the
setting's (``DFSCAN_<FIELD>``) and the default shown in its help is read from
``Settings`` itself, so help never drifts from the value a command really uses.
Options default to ``None``: :func:`dfscan.core.settings.from_env` then fills what
the command line left out, from the environment or the defaults.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import click

from dfscan.core.errors import UnknownName, first_line
from dfscan.core.redact import mask_text
from dfscan.core.settings import (
    BATCH_MODES,
    DEFAULT_DB_URL,
    FACE_AGGREGATIONS,
    FACE_MODES,
    PRECISIONS,
    Settings,
    SettingsError,
    env_name,
)

__all__ = [
    "migrated_database",
    "batch_size_option",
    "broker_option",
    "db_option",
    "face_options",
    "face_settings",
    "json_option",
    "max_attempts_option",
    "max_outstanding_option",
    "model_option",
    "one_line",
    "provenance_options",
    "provenance_settings",
    "reports_errors",
    "reuse_verdicts_option",
    "runtime_options",
    "s3_endpoint_option",
    "SCAN_ID",
    "scan_id_option",
    "setting_option",
    "stop_on_signals",
    "threads_option",
    "video_options",
    "video_settings",
    "visibility_timeout_option",
]

_DEFAULTS = {f.name: f.default for f in fields(Settings) if f.default is not MISSING}


def _default_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def setting_option(*decls: str, field: str, help: str, show_default: bool = True, envvar: str | None = None,
                   **kwargs: Any) -> Callable:
    """A click option for the setting ``field``: its variable, and its default (from ``Settings``) in the help.

    ``envvar`` names another variable where the option has always read one (``--threads``: ``DFSCAN_THREADS``).
    """
    if field not in {f.name for f in fields(Settings)}:
        raise KeyError(f"no setting {field!r}")
    if show_default and _DEFAULTS.get(field) is not None:
        help = f"{help} [default: {_default_text(_DEFAULTS[field])}]"
    return click.option(*decls, field, envvar=envvar or env_name(field), show_envvar=True, default=None, help=help,
                        **kwargs)


# Errors a user can cause and fix: they end the command with one line, no traceback.
def _user_errors() -> tuple[type[BaseException], ...]:
    import sqlalchemy.exc

    from dfscan.db.errors import DatabaseError
    from dfscan.detector.errors import DetectorError
    from dfscan.scanner.errors import ScannerError
    from dfscan.trt.errors import RuntimeErrorBase
    from dfscan.workers.reading.errors import DecoderUnavailable

    return (
        SettingsError,
        DatabaseError,
        DetectorError,
        ScannerError,
        RuntimeErrorBase,
        UnknownName,  # an unknown name in any registry: decoder, face detector, runtime, backbone, ...
        DecoderUnavailable,
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.ArgumentError,
        sqlalchemy.exc.DataError,  # a value out of the column's range (PostgreSQL checks, SQLite doesn't)
        *_broker_errors(),
    )


def _broker_errors() -> tuple[type[BaseException], ...]:
    """The fleet's errors, and the broker's connection errors (kombu and redis-py) where they are installed."""
    from dfscan.workers.fleet.broker import connection_errors
    from dfscan.workers.fleet.errors import FleetError

    return (FleetError, *connection_errors())


def reports_errors(func: Callable) -> Callable:
    """Turn the errors a user can fix into one line and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except click.ClickException:
            raise
        except _user_errors() as exc:
            raise click.ClickException(one_line(exc)) from None

    return wrapper


def one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error
    source = exc if orig is None else orig
    # A driver error that says nothing is named by the wrapper's type.
    first = first_line(source, limit=None) if str(source).strip() else type(exc).__name__
    return mask_text(first)[:400]


# Ids are PostgreSQL integers: a larger number names no scan, and is refused as a usage error
# before it reaches the database (where it would overflow).
SCAN_ID = click.IntRange(1, 2**31 - 1)


def scan_id_option(func: Callable) -> Callable:
    """--scan ID: which scan a command reads."""
    return click.option("--scan", "scan_id", type=SCAN_ID, help="Scan id (default: the latest scan).")(func)


def db_option(func: Callable) -> Callable:
    # The database is the one setting every command needs resolved: its default is concrete.
    return click.option(
        "--db",
        "db_url",
        envvar=env_name("db_url"),
        default=DEFAULT_DB_URL,
        show_default=True,
        show_envvar=True,
        help="SQLAlchemy URL of the results database (sqlite:///FILE or postgresql+psycopg://...).",
    )(func)


def model_option(func: Callable) -> Callable:
    return setting_option("--model", field="model", type=click.Path(path_type=Path),
                          help="ONNX model file (model_info.json beside it is read if present).")(func)


def broker_option(func: Callable) -> Callable:
    return setting_option("--broker", field="broker_url",
                          help="Redis URL of the broker (redis://[:PASSWORD@]HOST:PORT/DB, rediss:// for TLS).")(func)


def batch_size_option(func: Callable) -> Callable:
    return setting_option("--batch-size", field="batch_size", type=int, help="Images per inference batch.")(func)


def threads_option(func: Callable) -> Callable:
    return setting_option("--threads", field="intra_op_threads", type=int, envvar="DFSCAN_THREADS",
                          help="Inference threads per process (0: all cores).")(func)


def max_attempts_option(func: Callable) -> Callable:
    return setting_option("--max-attempts", field="max_attempts", type=int,
                          help="Deliveries of a chunk before its images become 'worker-lost' error rows.")(func)


def visibility_timeout_option(func: Callable) -> Callable:
    return setting_option("--visibility-timeout", field="visibility_timeout", type=int,
                          help="Seconds before a chunk of a vanished worker goes to another one; longer than any "
                               "chunk.")(func)


def max_outstanding_option(func: Callable) -> Callable:
    return setting_option("--max-outstanding", field="max_outstanding_chunks", type=int,
                          help="With a broker: most chunks enqueued and unfinished at once.")(func)


def s3_endpoint_option(func: Callable) -> Callable:
    return setting_option("--s3-endpoint-url", field="s3_endpoint_url",
                          help="Endpoint of an S3-compatible store for s3:// paths (http[s]://HOST:PORT) [default: "
                               "AWS, or AWS_ENDPOINT_URL_S3]. Credentials come from the AWS chain, never from "
                               "here.")(func)


def reuse_verdicts_option(func: Callable) -> Callable:
    return setting_option("--reuse-verdicts/--no-reuse-verdicts", field="reuse_verdicts", show_default=False,
                          help="Take an earlier scan's 'ok' verdict for a file with the same bytes (content hash) "
                               "and the same model instead of scoring it again [default: no].")(func)


def json_option(what: str) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON.")


def runtime_options(func: Callable) -> Callable:
    """--runtime, --decoder, --precision, --engine-dir: how a process scores images."""
    options = [
        setting_option("--runtime", field="runtime",
                       help="auto | onnxruntime | tensorrt | torch (auto: TensorRT, then PyTorch on CUDA, then "
                            "ONNX Runtime)."),
        setting_option("--decoder", field="decoder",
                       help="auto | pillow | dali | dali-gpu | dali-cpu (auto: DALI on a GPU, else Pillow)."),
        setting_option("--batches", field="batches", type=click.Choice(BATCH_MODES),
                       help="Where batches live from decode to logits: host (NumPy), device (torch tensors on the "
                            "runtime's device; --runtime torch or tensorrt), auto (device on CUDA)."),
        setting_option("--precision", field="precision", type=click.Choice(PRECISIONS),
                       help="TensorRT: the best cached engine, else fp16; torch: fp16 on CUDA (or bf16, fp32), fp32 "
                            "on the CPU (or bf16)."),
        setting_option("--engine-dir", field="engine_dir", type=click.Path(file_okay=False, path_type=Path),
                       help="TensorRT engine cache [default: engines/ beside the model]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


FACE_FIELDS = ("faces", "face_detector", "max_faces", "face_margin", "min_face_size", "face_aggregation",
               "face_detect_size", "face_detect_min_face")


def face_options(func: Callable) -> Callable:
    """--faces and the face stage's knobs; the command takes them as keyword arguments (:func:`face_settings`)."""
    options = [
        setting_option("--faces", field="faces", type=click.Choice(FACE_MODES),
                       help="Score faces (crops) instead of whole images; auto follows the model's "
                            "model_info.json 'input'."),
        setting_option("--face-detector", field="face_detector", help="Face detector (mtcnn)."),
        setting_option("--max-faces", field="max_faces", type=int,
                       help="Most faces scored per image (the largest); the row says how many were found."),
        setting_option("--face-margin", field="face_margin", type=float,
                       help="Crop side as a multiple of the face box (square, clamped to the image)."),
        setting_option("--min-face-size", field="min_face_size", type=int,
                       help="Smallest face scored, in pixels of the original image."),
        setting_option("--face-aggregation", field="face_aggregation", type=click.Choice(FACE_AGGREGATIONS),
                       help="How the faces' p_fake make the image's."),
        setting_option("--face-detect-size", field="face_detect_size", type=int,
                       help="Longer side of the downscaled copy the detector looks at."),
        setting_option("--face-detect-min-face", field="face_detect_min_face", type=int,
                       help="Smallest face the detector looks for on that copy, in its pixels (at least 12)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def face_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the face options from a command's keyword arguments (for ``from_env``)."""
    return {name: kwargs.pop(name, None) for name in FACE_FIELDS}


VIDEO_FIELDS = ("video_extensions", "frames", "video_time_limit_s")


def video_options(func: Callable) -> Callable:
    """--video-extensions, --frames, --video-time-limit; the command takes them as keyword arguments."""
    options = [
        setting_option("--video-extensions", field="video_extensions",
                       help="Comma-separated video extensions to take from directories ('none': images only); each "
                            "video is one row, scored from sampled frames."),
        setting_option("--frames", field="frames", type=click.IntRange(1, 1024), show_default=False,
                       help="Frames sampled per video, evenly spaced in time [default: the video model's "
                            "'frames' in model_info.json, else 16]."),
        setting_option("--video-time-limit", field="video_time_limit_s", type=float,
                       help="Seconds one video may take to sample; past it the video is a 'timeout' error row."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def provenance_options(func: Callable) -> Callable:
    """--provenance/--no-provenance, --c2pa-trust-anchors; the command takes them as keyword arguments."""
    func = setting_option("--c2pa-trust-anchors", field="c2pa_trust_anchors", show_default=False,
                          type=click.Path(dir_okay=False, path_type=Path),
                          help="PEM certificates a C2PA signer must chain to for its manifest to be 'trusted' "
                               "[default: none; sound manifests are 'valid'].")(func)
    return setting_option("--provenance/--no-provenance", field="provenance", show_default=False,
                          help="Read each file's C2PA manifest (never fetching a remote one), IPTC/XMP source "
                               "type, generator settings and invisible watermark [default: on].")(func)


def provenance_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the provenance options from a command's keyword arguments (for ``from_env``)."""
    return {name: kwargs.pop(name, None) for name in ("provenance", "c2pa_trust_anchors")}


def video_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the video options from a command's keyword arguments (for ``from_env``), parsed."""
    from dfscan.core.settings import parse_video_extensions

    values = {name: kwargs.pop(name, None) for name in VIDEO_FIELDS}
    values["video_extensions"] = parse_video_extensions(values["video_extensions"])
    return values


class stop_on_signals:
    """First SIGINT/SIGTERM: finish the batch in flight, then stop. Second: stop now."""

    def __enter__(self) -> threading.Event:
        self.stop = threading.Event()
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self.stop

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt
        self.stop.set()
        click.echo("\nstopping after the batch in flight (again to stop now)", err=True)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def migrated_database(db_url: str) -> Iterator[Any]:
    """The session factory of a database brought up to date, for one command; the engine is disposed after."""
    from dfscan import db

    engine = db.make_engine(db_url)
    try:
        db.upgrade(engine)
        yield db.session_factory(engine)
    finally:
        engine.dispose()
