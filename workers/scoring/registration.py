"""Registering a scan: its model row, its scan row and its audit record, the same for every mode.

The embedded scan and the fleet's producer both call :func:`register_scan`;
the audit record (``scans.settings``) has the same keys in both, plus the
runtime and decoder of the scanning process in the embedded mode (in the
fleet each worker's are in ``scan_workers``). The record is written once:
what changes while a scan runs lives in columns.
"""

from __future__ import annotations

import getpass
import os
import platform
import socket
import sys
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from dfscan import __version__, db
from dfscan.core.redact import mask_text
from dfscan.scanner import ScanSource
from dfscan.scanner.paths import storable
from dfscan.core.settings import Settings
from dfscan.trt.model_info import ModelInfo

__all__ = ["MODES", "RegisteredScan", "audit_record", "model_info_dict", "origin", "register_model",
           "register_scan", "threshold_for"]  # fmt: skip

MODES = ("embedded", "distributed")


@dataclass(frozen=True)
class RegisteredScan:
    scan_id: int
    model_id: int


def threshold_for(settings: Settings, info: ModelInfo) -> float:
    """The decision threshold a scan applies: the one asked for, else the model's."""
    return info.threshold if settings.threshold is None else settings.threshold


def origin() -> dict:
    """Who started a scan, where, and with what command.

    The command line is kept as argv, with the secrets of any URL in it
    (``--db postgresql://u:PASSWORD@h/db``, ``--broker redis://:PASSWORD@h``,
    ``...?password=PASSWORD``) replaced by ``***`` (:func:`dfscan.core.redact.mask_text`):
    the record is readable by every analyst.
    """
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        user = str(os.getuid())
    return {
        "user": user,
        "host": socket.gethostname(),
        "command": [mask_text(storable(str(arg))) for arg in sys.argv],
        "dfscan_version": __version__,
        "python": platform.python_version(),
    }


def model_info_dict(info: ModelInfo) -> dict:
    """The ``models.info`` document: what the model expects and decides with."""
    return {
        "architecture": info.architecture,
        "classes": list(info.classes),
        "input_size": list(info.input_size),
        "mean": list(info.mean),
        "std": list(info.std),
        "threshold": info.threshold,
        "temperature": info.temperature,
        "fixed_batch": info.fixed_batch,
        "opset": info.opset,
        "has_sidecar": info.has_sidecar,
    }


def audit_record(settings: Settings, info: ModelInfo, source: ScanSource, *, mode: str, incremental: bool,
                 runtime: dict[str, Any] | None = None) -> dict[str, Any]:
    """What produced a scan's verdicts, stored with the scan (``scans.settings``)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} not in {MODES}")
    record: dict[str, Any] = {
        **origin(),
        "mode": mode,
        "model_path": storable(os.fspath(info.path)),
        "model_sha256": info.sha256,
        "threshold": threshold_for(settings, info),
        "temperature": info.temperature,
        "chunk_size": settings.chunk_size,
        "max_pixels": settings.max_pixels,
        "walk": source.record(),
        "incremental": incremental,
        "reuse_verdicts": settings.reuse_verdicts,
    }
    if mode == "distributed":
        record["queue"] = settings.queue
    if runtime is not None:
        record.update(runtime)
    return record


def register_model(session: Session, info: ModelInfo) -> int:
    return db.get_or_create_model(session, sha256=info.sha256, name=info.architecture,
                                  path=storable(os.fspath(info.path)),
                                  info=model_info_dict(info))


def register_scan(session: Session, settings: Settings, info: ModelInfo, source: ScanSource, *, name: str | None,
                  mode: str, incremental: bool, runtime: dict[str, Any] | None = None) -> RegisteredScan:
    """The model's row (shared by every scan of that file) and a new scan row, status ``running``."""
    model_id = register_model(session, info)
    scan_id = db.create_scan(
        session,
        name=name or source.default_name(),
        roots=source.stored_roots,
        model_id=model_id,
        threshold=threshold_for(settings, info),
        settings=audit_record(settings, info, source, mode=mode, incremental=incremental, runtime=runtime),
    )
    return RegisteredScan(scan_id, model_id)
