"""Everything a process needs to score images, created once and torn down once.

The in-process scan and each Celery worker process hold one
:class:`ScanContext`: the model's description, the runtime session, the
decoder and reader pools, and the database engine.  Creating it is the
expensive step (model load and probe), so it never happens at import.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from dfscan import db
from dfscan.core.settings import Settings, SettingsError
from dfscan.scanner.objects import ObjectStore, object_store
from dfscan.trt import Runtime, load_runtime
from dfscan.trt.model_info import ModelInfo, inspect_model
from dfscan.workers.images import Preprocess, create_decoder
from dfscan.workers.scoring.face_stage import FaceDecoder, face_decoder, faces_enabled
from dfscan.workers.scoring.registration import register_model, threshold_for
from dfscan.workers.scoring.stages import Stages
from dfscan.workers.scoring.verdict import Verdict

_UNSET = object()


class SharedRuntime:
    """A runtime that several threads call (the service's scans and its upload batcher): one call at a time.

    A TensorRT execution context and its pinned buffers serve one call at a time; on the CPU, concurrent
    ONNX Runtime calls would only share the same cores.  Every other attribute is the runtime's.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.inner = runtime
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def infer(self, batch):
        with self._lock:
            return self.inner.infer(batch)

    def close(self) -> None:
        self.inner.close()


class SharedDetector:
    """The face detector (one torch model) called by the service's scans and uploads: one call at a time."""

    def __init__(self, detector) -> None:
        self.inner = detector
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def detect(self, canvas, min_size=None):
        with self._lock:
            return self.inner.detect(canvas, min_size)

    def detect_tensors(self, images, min_size=None, *args, **kwargs):
        # The device-resident face path's detection (workers.faces.crops.detect_canvas): one call at a time too.
        with self._lock:
            return self.inner.detect_tensors(images, min_size, *args, **kwargs)


@dataclass
class Resources:
    """What the stages of a scan are made from (:meth:`Stages.build`): settings, model, runtimes, decoders.

    ``runtimes`` holds a runtime per graph: ``image`` always, ``sequence`` once
    the video stage has loaded the model's video graph, on the image graph's
    runtime (``auto`` is resolved once, for both).
    """

    settings: Settings
    info: ModelInfo
    pre: Preprocess
    verdict: Verdict
    runtimes: dict[str, Runtime]
    store: ObjectStore | None = None
    _decoder: object = field(default=_UNSET, repr=False)
    _faces: FaceDecoder | None = field(default=None, repr=False)

    def decoder(self):
        """The image decoder (:data:`~dfscan.workers.images.DECODERS`); with faces on, the face decoder over it."""
        if self._decoder is _UNSET:
            s = self.settings
            base = create_decoder(s.decoder, self.pre, threads=s.decode_threads, batch_size=s.batch_size)
            if faces_enabled(s.faces, self.info.input):
                self._faces = face_decoder(base, self.pre, s)
            self._decoder = self._faces or base
        return self._decoder

    def face_decoder(self) -> FaceDecoder | None:
        """The face decoder (None: faces off, the model sees whole images)."""
        self.decoder()
        return self._faces

    def close(self) -> None:
        for runtime in self.runtimes.values():
            runtime.close()


@dataclass
class ScanContext:
    settings: Settings
    info: ModelInfo
    resources: Resources
    stages: Stages
    engine: Engine
    sessions: sessionmaker[Session]
    # How this scan decides (a fleet worker replaces it per scan: the scan's own threshold); the loop hands
    # it to the stages with each chunk's job.
    verdict: Verdict
    # --reuse-verdicts: take an earlier scan's ok row for the same bytes and model (workers.scoring.dedupe).
    # A fleet worker sets it per scan, from the scan's audit record.
    reuse_verdicts: bool = False

    @classmethod
    def open(cls, settings: Settings, *, migrate: bool = True) -> "ScanContext":
        """Check the model, load the runtime and the stages, connect and migrate the database.

        Everything that can fail for a setup reason fails here, before a single
        image is read.
        """
        if settings.model is None:
            raise SettingsError("no model given: pass --model PATH or set DFSCAN_MODEL")
        engine = db.make_engine(settings.db_url)
        info = inspect_model(settings.model)
        runtime = load_runtime(settings.runtime, info, intra_op_threads=settings.intra_op_threads,
                               precision=settings.precision, engine_dir=settings.engine_dir)
        pre = Preprocess(size=info.input_size, mean=info.mean, std=info.std, max_pixels=settings.max_pixels,
                         max_decode_bytes=settings.max_decode_bytes)
        verdict = Verdict(classes=info.classes, threshold=threshold_for(settings, info), temperature=info.temperature)
        res = Resources(settings, info, pre, verdict, {"image": runtime}, object_store(settings.s3_endpoint_url))
        try:
            stages = Stages.build(res)
        except BaseException:
            res.close()
            raise
        try:
            if migrate:
                db.upgrade(engine)
        except Exception:
            stages.close()
            res.close()
            raise
        return cls(settings=settings, info=info, resources=res, stages=stages, engine=engine,
                   sessions=db.session_factory(engine), verdict=verdict, reuse_verdicts=settings.reuse_verdicts)

    @property
    def runtime(self) -> Runtime:
        """The image graph's runtime (the bench and the tests may wrap it: the infer stage sees the wrapper)."""
        return self.resources.runtimes["image"]

    @runtime.setter
    def runtime(self, runtime: Runtime) -> None:
        self.resources.runtimes["image"] = runtime

    @property
    def decoder(self):
        return self.resources.decoder()

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    def runtime_record(self) -> dict:
        """The runtime and decoder this process scores with (a ``scan_workers`` row)."""
        decoder = self.decoder
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
            "video": self.stages.records().get("video"),
        }

    def faces_record(self) -> dict | None:
        """The face decoder's settings (None: faces off, the model sees whole images)."""
        faces = self.resources.face_decoder()
        if faces is None:
            return None
        options = faces.options
        return {"detector": faces.detector.name, "max_faces": options.max_faces, "margin": options.margin,
                "min_size": options.min_size, "aggregation": options.aggregation, "detect_size": options.detect_size,
                "detect_min_face": options.detect_min_face}

    def record_worker(self, session: Session, scan_id: int) -> None:
        db.record_worker(session, scan_id=scan_id, host=socket.gethostname(), pid=os.getpid(),
                         info=self.runtime_record())

    def share(self) -> "ScanContext":
        """Make this context safe to share between threads that score (the service's scans and uploads)."""
        runtimes = self.resources.runtimes
        for graph, runtime in list(runtimes.items()):
            if not isinstance(runtime, SharedRuntime):
                runtimes[graph] = SharedRuntime(runtime)  # type: ignore[assignment]
        # Every face detection (images, video frames, uploads) goes through the face finder's detector.
        faces = self.resources.face_decoder()
        if faces is not None and not isinstance(faces.finder.detector, SharedDetector):
            faces.finder.detector = SharedDetector(faces.finder.detector)
        return self

    def register_model(self) -> int:
        with self.sessions.begin() as session:
            return register_model(session, self.info)

    def close(self) -> None:
        self.stages.close()
        self.resources.close()
        self.engine.dispose()
