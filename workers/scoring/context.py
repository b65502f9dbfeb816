"""Everything a process needs to score images, created once and torn down once.

The in-process scan and each Celery worker process hold one
:class:`ScanContext`: the model's description, the runtime session, the
decoder and reader pools, and the database engine.  Creating it is the
expensive step (model load and probe), so it never happens at import.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from dfscan import db
from dfscan.scanner.objects import object_store
from dfscan.trt.model_info import ModelInfo, inspect_model
from dfscan.core.settings import Settings, SettingsError
from dfscan.trt import Runtime, load_runtime
from dfscan.workers.scoring.batches import BatchMaker, Verdict
from dfscan.workers.images.decode import Preprocess
from dfscan.workers.images.decoders import create_decoder
from dfscan.workers.scoring.face_stage import FaceStage, faces_enabled, face_stage
from dfscan.workers.scoring.video_stage import video_stage
from dfscan.workers.scoring.registration import register_model, threshold_for


@dataclass
class ScanContext:
    settings: Settings
    info: ModelInfo
    runtime: Runtime
    batches: BatchMaker
    verdict: Verdict
    engine: Engine
    sessions: sessionmaker[Session]
    # --reuse-verdicts: take an earlier scan's ok row for the same bytes and model (workers.dedupe).
    # A fleet worker sets it per scan, from the scan's audit record.
    reuse_verdicts: bool = False

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
        if faces_enabled(settings.faces, info.input):
            decoder = face_stage(decoder, pre, settings)
        try:
            video = video_stage(pre, settings, info, faces=decoder if isinstance(decoder, FaceStage) else None)
        except Exception:
            runtime.close()
            raise
        threshold = threshold_for(settings, info)
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
            batches=BatchMaker(decoder, read_threads=settings.read_threads,
                               store=object_store(settings.s3_endpoint_url), video=video),
            verdict=verdict,
            engine=engine,
            sessions=db.session_factory(engine),
            reuse_verdicts=settings.reuse_verdicts,
        )

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

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
            "faces": self.faces_record(),
            "video": self.video_record(),
        }

    def video_record(self) -> dict | None:
        """The video stage's settings (None: videos off)."""
        video = getattr(self.batches, "video", None)
        return video.record() if video is not None else None

    def faces_record(self) -> dict | None:
        """The face stage's settings (None: faces off, the model sees whole images)."""
        options = getattr(self.batches.decoder, "options", None)
        if options is None:
            return None
        return {"detector": self.batches.decoder.detector.name, "max_faces": options.max_faces,
                "margin": options.margin, "min_size": options.min_size, "aggregation": options.aggregation,
                "detect_size": options.detect_size}

    def record_worker(self, session: Session, scan_id: int) -> None:
        db.record_worker(session, scan_id=scan_id, host=socket.gethostname(), pid=os.getpid(),
                         info=self.runtime_record())

    def register_model(self) -> int:
        with self.sessions.begin() as session:
            return register_model(session, self.info)

    def close(self) -> None:
        self.batches.close()
        self.runtime.close()
        self.engine.dispose()
