"""The engine cache: one serialized TensorRT engine per model, GPU type, TensorRT version and precision.

A TensorRT engine only runs on the GPU model and TensorRT version it was built
with, so the cache key holds both, and the ONNX file's sha256 (not its path:
a re-exported model is a new model).  Beside each ``.engine`` file lies a
``.json`` record of its key (and of the ONNX file it was built from: the FP16
conversion or the Q/DQ file for those precisions), checked before the engine is
deserialised.  Timing caches are per GPU type
and TensorRT version and shared by every model.

Layout (by default in ``engines/`` beside the model)::

    <sha16>-<gpu>-<sm>-trt<version>-<precision>.engine   .json   .lock
    timing-<gpu>-<sm>-trt<version>.cache
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from dfscan.trt.errors import EngineIncompatible
from dfscan.trt.model_info import ENGINE_DIR_NAME, ModelFolder

__all__ = ["ENGINE_DIR_NAME", "EngineCache", "EngineKey", "EnginePaths", "default_engine_dir"]

RECORD_FORMAT = 1


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "x"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine's validity depends on."""

    onnx_sha256: str
    gpu_name: str
    capability: tuple[int, int]
    tensorrt_version: str
    precision: str
    # Sequence engines (the video graph): the longest T of their profile; None for image engines.
    frames: int | None = None

    @property
    def hardware(self) -> str:
        """``nvidia-h100-80gb-hbm3-sm90-trt10.13.0.35``: the part shared by the timing cache."""
        return f"{_slug(self.gpu_name)}-sm{self.capability[0]}{self.capability[1]}-trt{_slug(self.tensorrt_version)}"

    @property
    def stem(self) -> str:
        sequence = f"-t{self.frames}" if self.frames is not None else ""
        return f"{self.onnx_sha256[:16]}-{self.hardware}-{self.precision}{sequence}"

    def record(self) -> dict:
        data = asdict(self)
        data["capability"] = list(self.capability)
        return data


@dataclass(frozen=True)
class EnginePaths:
    engine: Path
    record: Path
    calibration: Path
    lock: Path


def default_engine_dir(model_path: Path) -> Path:
    """``engines/`` beside the model file (:attr:`ModelFolder.engines`)."""
    return ModelFolder(Path(model_path)).engines


class EngineCache:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def paths(self, key: EngineKey) -> EnginePaths:
        base = self.directory / key.stem
        return EnginePaths(
            engine=base.with_name(base.name + ".engine"),
            record=base.with_name(base.name + ".json"),
            calibration=base.with_name(base.name + ".calib"),
            lock=base.with_name(base.name + ".lock"),
        )

    def timing_cache(self, key: EngineKey) -> Path:
        return self.directory / f"timing-{key.hardware}.cache"

    def read_record(self, key: EngineKey) -> dict | None:
        """The engine's record if the engine and its record both exist and match ``key``; else None.

        A record that exists but names another key (a file copied from another
        machine, a hand-renamed one) raises :class:`EngineIncompatible`.
        """
        p = self.paths(key)
        if not p.engine.is_file() or not p.record.is_file():
            return None
        try:
            record = json.loads(p.record.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None  # a half-written record: treat as missing, it is rebuilt
        if not isinstance(record, dict):
            return None
        want = key.record()
        diffs = [f"{name} {record.get(name)!r} != {value!r}" for name, value in want.items() if record.get(name) != value]
        if diffs:
            raise EngineIncompatible(
                f"{p.engine} was built for another setup ({'; '.join(diffs)}); delete it or rebuild with "
                f"`dfscan build-engine`"
            )
        if record.get("engine_bytes") != p.engine.stat().st_size:
            return None  # engine file truncated or replaced: rebuild
        return record

    def load(self, key: EngineKey) -> tuple[bytes, dict] | None:
        """The serialized engine and its record, or None on a miss."""
        record = self.read_record(key)
        if record is None:
            return None
        return self.paths(key).engine.read_bytes(), record

    def store(self, key: EngineKey, engine: bytes, **details: object) -> EnginePaths:
        """Write the engine, then its record (both atomically): a reader never sees a record without its engine."""
        self.directory.mkdir(parents=True, exist_ok=True)
        p = self.paths(key)
        _write_atomic(p.engine, engine)
        record = {
            "format": RECORD_FORMAT,
            **key.record(),
            "engine_bytes": len(engine),
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **details,
        }
        _write_atomic(p.record, (json.dumps(record, indent=2) + "\n").encode())
        return p

    def cached_precisions(self, onnx_sha256: str, gpu_name: str, capability: tuple[int, int], tensorrt_version: str,
                          frames: int | None = None) -> list[str]:
        """Precisions with a valid engine for this model (sequences: of ``frames``) on this GPU type and TensorRT."""
        from dfscan.trt.precisions import PRECISIONS

        found = []
        for name in PRECISIONS:
            key = EngineKey(onnx_sha256, gpu_name, tuple(capability), tensorrt_version, name, frames)
            try:
                if self.read_record(key) is not None:
                    found.append(name)
            except EngineIncompatible:
                continue
        return found

    @contextlib.contextmanager
    def lock(self, key: EngineKey) -> Iterator[None]:
        """Exclusive across processes on this host: the worker that builds an engine makes the others wait for it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.paths(key).lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
