"""Everything a process needs to score images, created once and torn down once.

The in-process scan and each Celery worker process hold one
:class:`ScanContext`: the model's description, the runtime session, the
decoder and reader pools, and the database engine.  Creating it is the
expensive step (model load and probe), so it never happens at import.
"""

from __future__ import annotations

import getpass
import os
import platform
import re
import socket
import sys
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from dfscan import db
from dfscan.trt.model_info import ModelInfo, inspect_model
from dfscan import __version__
from dfscan.settings import Settings, SettingsError
from dfscan.trt import Runtime, load_runtime
from dfscan.workers.batches import BatchMaker, Verdict
from dfscan.workers.decode import Preprocess
from dfscan.workers.decoders import create_decoder


@dataclass
class ScanContext:
    settings: Settings
    info: ModelInfo
    runtime: Runtime
    batches: BatchMaker
    verdict: Verdict
    engine: Engine
    sessions: sessionmaker[Session]

    @classmethod
    def open(cls, settings: Settings, *, migrate: bool = True) -> "ScanContext":
        """Check the model, load the runtime and decoder, connect and migrate the database.

        Everything that can fail for a setup reason fails here, before a single
        image is read.
        """
        if settings.model is None:
            raise SettingsError("no model given: pass --model PATH or set DFSCAN_MODEL")
        engine = db.make_engine(settings.db_url)
        info = inspect_model(settings.model)
        runtime = load_runtime(
            settings.runtime,
            info,
            intra_op_threads=settings.intra_op_threads,
            precision=settings.precision,
            engine_dir=settings.engine_dir,
        )
        pre = Preprocess(size=info.input_size, mean=info.mean, std=info.std, max_pixels=settings.max_pixels)
        decoder = create_decoder(settings.decoder, pre, threads=settings.decode_threads, batch_size=settings.batch_size)
        threshold = info.threshold if settings.threshold is None else settings.threshold
        verdict = Verdict(classes=info.classes, threshold=threshold, temperature=info.temperature)
        try:
            if migrate:
                db.upgrade(engine)
        except Exception:
            runtime.close()
            raise
        return cls(
            settings=settings,
            info=info,
            runtime=runtime,
            batches=BatchMaker(decoder, read_threads=settings.read_threads),
            verdict=verdict,
            engine=engine,
            sessions=db.session_factory(engine),
        )

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    def audit(self) -> dict:
        """What produced a scan's verdicts, stored with the scan (``scans.settings``)."""
        return {
            **origin(),
            "model_path": os.fspath(self.info.path),
            "model_sha256": self.info.sha256,
            **self.runtime_record(),
            "threshold": self.verdict.threshold,
            "temperature": self.verdict.temperature,
            "chunk_size": self.settings.chunk_size,
            "max_pixels": self.settings.max_pixels,
        }

    def runtime_record(self) -> dict:
        """The runtime and decoder this process scores with (a ``scan_workers`` row)."""
        decoder = self.batches.decoder
        return {
            "runtime": self.runtime.name,
            "runtime_version": self.runtime.version,
            "precision": self.runtime.precision,
            "device": self.runtime.device,
            "fixed_batch": self.runtime.fixed_batch,
            "decoder": decoder.name,
            "decoder_version": getattr(decoder, "version", None),
            "batch_size": self.settings.batch_size,
        }

    def record_worker(self, session: Session, scan_id: int) -> None:
        db.record_worker(session, scan_id=scan_id, host=socket.gethostname(), pid=os.getpid(),
                         info=self.runtime_record())

    def register_model(self) -> int:
        with self.sessions.begin() as session:
            return db.get_or_create_model(
                session,
                sha256=self.info.sha256,
                name=self.info.architecture,
                path=os.fspath(self.info.path),
                info=model_info_dict(self.info),
            )

    def close(self) -> None:
        self.batches.close()
        self.runtime.close()
        self.engine.dispose()


_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:)[^@\s]*@")


def origin() -> dict:
    """Who started a scan, where, and with what command.

    The command line is kept as argv, with the password of any URL in it
    (``--db postgresql://u:PASSWORD@h/db``, ``--broker redis://:PASSWORD@h``)
    replaced by ``***``: the record is readable by every analyst.
    """
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        user = str(os.getuid())
    return {
        "user": user,
        "host": socket.gethostname(),
        "command": [_URL_PASSWORD.sub(r"\1***@", str(arg)) for arg in sys.argv],
        "dfscan_version": __version__,
        "python": platform.python_version(),
    }


def model_info_dict(info: ModelInfo) -> dict:
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
