"""The video stage: sample each video's frames, make its sequences, score them, one row per video.

A video is T frames sampled evenly in time (:mod:`workers.video`).  With
faces off its one sequence is the whole frames, resized to the model's input
like an image; with faces on, the face detector looks at every sampled frame,
faces are followed from frame to frame by box overlap
(:mod:`workers.faces.tracks`), and each track is a sequence of T crops cut as
for images (the same square of ``margin`` times the box,
:mod:`workers.faces.geometry`).  A frame where a track's face was missed takes
the nearest frame's box.

With a sequence model (``video_model`` in ``model_info.json``) each sequence
goes through the BiLSTM as one (T, 3, H, W) item; sequences of several videos
share a runtime batch of at most ``batch_size`` frames (``batch_size // T``
sequences, at least one), so memory is bounded by frames, whatever T is.
The sequence graph runs on the image graph's runtime (:func:`sequence_runtime`:
torch, TensorRT or ONNX Runtime, whichever ``--runtime`` resolved to), so a
process holds one model session per graph, never a second runtime for videos.
Without one, each frame is scored alone by the image model and a track's
p_fake is the mean of its frames': a weaker verdict (no temporal model), said
in the row's notes.  Either way the video's p_fake is its most suspicious
track's, and every frame of every track is a :class:`~dfscan.db.records.FrameRow`.

Crops wait for the runtime as uint8 (a quarter of float32's memory) and are
normalised batch by batch.

Which decoder samples the frames follows the scan's image decoder
(:data:`VIDEO_SAMPLERS`): with a DALI one, DALI's video decoder
(:class:`workers.video.dali.DaliVideoSampler`, which hands each file it can't
take to PyAV), else PyAV.  ``s3://`` videos are always PyAV's: it streams them
over HTTP from a presigned URL (:mod:`workers.video._objects`); the row's size
and mtime come from the object's HEAD.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from dfscan.db.records import FrameRow, ResultRow
from dfscan.core.redact import mask_text
from dfscan.scanner.objects import ObjectError, ObjectPath, is_object_url, object_store
from dfscan.scanner.paths import on_disk
from dfscan.workers.faces import FaceFinder, crop_faces, follow, select_faces
from dfscan.workers.images import Preprocess
from dfscan.workers.reading import ImageError, VideoError, stat_quietly
from dfscan.workers.scoring.stages import Batch, Input, Item
from dfscan.workers.scoring.verdict import Decision, Verdict
from dfscan.core.constants import DEFAULT_FRAMES
from dfscan.core.errors import first_line
from dfscan.core.registry import Registry
from dfscan.core.settings import DEFAULT_VIDEO_EXTENSIONS, SettingsError
from dfscan.workers.video.sample import (
    DEFAULT_MAX_SIDE,
    DEFAULT_TIME_LIMIT_S,
    SampledVideo,
    is_video_path,
    pyav_version,
    sample_video,
)

if TYPE_CHECKING:
    from dfscan.trt.base import Runtime
    from dfscan.workers.scoring.context import Resources
    from dfscan.workers.scoring.stages import Job

# The video sampler each image decoder implies: None is PyAV alone; else DALI's video decoder on that device
# ("auto": as plain ``dali``, where DALI can use a GPU, else its CPU backend). ``auto`` resolves first.
@dataclass(frozen=True)
class VideoSamplerSpec:
    name: str  # an image decoder's name (workers.images.DECODERS)
    device: str | None
    description: str


VIDEO_SAMPLERS: Registry[VideoSamplerSpec] = Registry("video sampler", entries=(
    VideoSamplerSpec("pillow", None, "PyAV alone"),
    VideoSamplerSpec("dali", "auto", "DALI's video decoder on the GPU where DALI can use one, else its CPU backend"),
    VideoSamplerSpec("dali-gpu", "gpu", "DALI's video decoder on NVDEC"),
    VideoSamplerSpec("dali-cpu", "cpu", "DALI's CPU video decoder (VP8, VP9)"),
))

log = logging.getLogger(__name__)

PER_FRAME_NOTE = ("no video model: each frame scored alone by the image model, p_fake the mean over a track's "
                  "frames (a weaker verdict than a sequence model's)")


@dataclass(frozen=True)
class VideoOptions:
    frames: int = DEFAULT_FRAMES
    time_limit_s: float = DEFAULT_TIME_LIMIT_S
    extensions: tuple[str, ...] = DEFAULT_VIDEO_EXTENSIONS
    max_side: int = DEFAULT_MAX_SIDE

    @classmethod
    def from_settings(cls, settings, model_frames: int | None = None) -> "VideoOptions":
        return cls(frames=settings.frames or model_frames or DEFAULT_FRAMES, time_limit_s=settings.video_time_limit_s,
                   extensions=tuple(settings.video_extensions))


@dataclass
class VideoTrack:
    """One sequence of a video: its crops (t, H, W, 3) uint8 and, per frame, the face box (None: whole frame)."""

    crops: np.ndarray
    boxes: list[tuple[int, int, int, int] | None]


@dataclass
class VideoItem:
    """One video through the stage: when its frames are, its tracks, what was odd about it.

    A :class:`~dfscan.workers.scoring.stages.Payload`: with a sequence model each
    track is one ``sequence`` input; without one each frame of each track is an
    ``image`` input and a track's p_fake is its frames' mean.  The video's p_fake
    is its most suspicious track's.
    """

    indices: list[int]
    timestamps_s: list[float]
    duration_s: float | None
    tracks: list[VideoTrack]
    found: int | None  # faces on: tracks found (before the cap); None with faces off
    notes: list[str] = field(default_factory=list)
    sequence: bool = True  # scored by the sequence model (else per frame)
    pre: Preprocess = field(default_factory=Preprocess)
    kind: str = "video"

    def inputs(self) -> list[Input]:
        if self.sequence:
            return [Input("sequence", self._normalised(track.crops)) for track in self.tracks]
        return [Input("image", frame) for track in self.tracks for frame in self._normalised(track.crops)]

    def _normalised(self, crops: np.ndarray) -> np.ndarray:
        # Crops wait as uint8 (a quarter of float32's memory) and are normalised when the model takes them.
        a, b = self.pre.scale_and_shift()
        return crops.astype(np.float32).transpose(0, 3, 1, 2) * a + b

    def row(self, item: Item, decisions: list[Decision], verdict: Verdict, now: datetime) -> ResultRow:
        frame_p: list[list[float] | None]
        if self.sequence:
            track_p, frame_p = [d.p_fake for d in decisions], [None] * len(self.tracks)
        else:
            ps = iter(d.p_fake for d in decisions)
            frame_p = [[next(ps) for _ in range(len(track.crops))] for track in self.tracks]
            track_p = [float(np.mean(f)) for f in frame_p]
        faces = None if self.found is None else len(self.tracks)
        common = dict(kind="video", frames=len(self.indices), duration_s=self.duration_s,
                      notes="; ".join(self.notes) or None, faces=faces, faces_found=self.found)
        if not self.tracks:
            return ResultRow(item.path, item.size, item.mtime, "no-face", None, None, None, None, None, now, **common)
        frame_rows = []
        for k, (track, p_track) in enumerate(zip(self.tracks, track_p)):
            for slot, (index, t) in enumerate(zip(self.indices, self.timestamps_s)):
                box = track.boxes[slot]
                p_frame = frame_p[k][slot] if frame_p[k] is not None else None
                frame_rows.append(FrameRow(k, index, round(t, 6), *(box or (None, None, None, None)), p_frame,
                                           p_track))
        video = verdict.aggregate(track_p, "max")  # the most suspicious track
        if isinstance(video, ImageError):
            return ResultRow.error_row(item.path, item.size, item.mtime, video.code, video.message, now, kind="video")
        return ResultRow(item.path, item.size, item.mtime, "ok", video.label, video.p_fake, video.confidence, None,
                         None, now, frame_rows=tuple(frame_rows), **common)


class VideoStage:
    """Claims the videos of a batch (by extension) and gives each its :class:`VideoItem` or its error."""

    name = "video"
    phase = "prepare"

    def __init__(self, pre: Preprocess, options: VideoOptions, *, faces: FaceFinder | None = None,
                 sequence_model: str | None = None, threads: int = 2, why_per_frame: str | None = None,
                 sampler=None, store=None) -> None:
        self.pre = pre
        # Said on every video row scored per frame where the sidecar promised a sequence model.
        self.why_per_frame = why_per_frame
        self.options = options
        self.faces = faces
        # The sequence graph's path (its runtime is the infer stage's); None: frames are scored one by one.
        self.sequence_model = sequence_model
        self.version = pyav_version()
        # DALI's video sampler (workers.video.dali.DaliVideoSampler) for the files on disk; None: PyAV alone.
        self.sampler = sampler
        self.store = store  # reads s3:// videos (scanner.objects.ObjectStore; None: the default endpoint's)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="video")
        # Videos are sampled in parallel; the face detector (one torch model) sees one video at a time.
        self._detect_lock = threading.Lock()

    # -- routing ----------------------------------------------------------------------------

    def wants(self, path: str) -> bool:
        return is_video_path(path, self.options.extensions)

    def cost(self, path: str) -> int | None:
        """What a video weighs in a batch of ``batch_size`` frames: T."""
        return self.options.frames if self.wants(path) else None

    def record(self) -> dict:
        sampler = self.sampler
        return {"frames": self.options.frames, "time_limit_s": self.options.time_limit_s,
                # The sampler of videos on disk; PyAV stands in for DALI per file, and reads every s3:// video.
                "decoder": self.version if sampler is None else f"{sampler.name} (DALI {sampler.version})",
                "fallback": None if sampler is None else self.version, "faces": self.faces is not None,
                "scoring": "sequence" if self.sequence_model is not None else "per-frame",
                "why_per_frame": self.why_per_frame, "sequence_model": self.sequence_model}

    # -- preparing --------------------------------------------------------------------------

    def run(self, batch: Batch, job: Job | None = None) -> None:
        items = [item for item in batch.items if item.stage is None and self.wants(item.path)]
        if not items:
            return
        paths = [item.path for item in items]
        roots = job.roots if job is not None else None
        # DALI opens files by name: a scan confined to its roots (scanner.confine) samples with PyAV alone.
        by_dali = self._sample_with_dali(paths) if roots is None else [None] * len(paths)
        prepared = self._pool.map(lambda p, d: self._prepare_one(p, d, roots), paths, by_dali)
        for item, (out, size, mtime, etag) in zip(items, prepared):
            item.stage, item.kind, item.size, item.mtime, item.etag = self.name, "video", size, mtime, etag
            if isinstance(out, ImageError):
                item.fail(out)
            else:
                item.payload = out

    def _sample_with_dali(self, paths: Sequence[str]) -> list[SampledVideo | ImageError | None]:
        """DALI's answer for each video on disk (None: PyAV samples it, as it does every s3:// video)."""
        out: list[SampledVideo | ImageError | None] = [None] * len(paths)
        local = [i for i, p in enumerate(paths) if not is_object_url(p)]
        if self.sampler is None or not local:
            return out
        try:
            found = self.sampler.sample_batch([on_disk(paths[i]) for i in local], self.options.frames,
                                              time_limit_s=self.options.time_limit_s)
        except Exception as exc:  # noqa: BLE001 - DALI itself failed (its pipeline can't be built): PyAV samples all
            self.sampler.stats["batches_left_to_pyav"] += 1
            log.warning("DALI's video sampler failed on a batch of %d videos (%s); PyAV samples them",
                        len(local), mask_text(first_line(exc)))
            return out
        for i, video in zip(local, found):
            out[i] = video
        return out

    def _prepare_one(self, path: str, sampled: SampledVideo | ImageError | None = None,
                     roots: tuple[str, ...] | None = None
                     ) -> tuple[VideoItem | ImageError, int | None, float | None, str | None]:
        """The video's item or its error, and the size, mtime and etag (objects only) for its row."""
        etag = None
        if is_object_url(path):
            try:
                # The listing's size and LastModified where the path carries them, else a HEAD request.
                info = path.stat() if isinstance(path, ObjectPath) else (self.store or object_store()).head(path)
            except ObjectError as exc:
                return VideoError(exc.code, exc.message), None, None, None
            size, mtime, etag = info.size, info.mtime, info.etag or None
        else:
            size, mtime = stat_quietly(path, roots)
        try:
            video = sampled if sampled is not None else sample_video(
                on_disk(path), self.options.frames, time_limit_s=self.options.time_limit_s,
                max_side=self.options.max_side, max_pixels=self.pre.max_pixels, store=self.store, roots=roots)
            if isinstance(video, ImageError):
                return video, size, mtime, etag
            return self._item(video), size, mtime, etag
        except ImageError as exc:
            return exc, size, mtime, etag
        except Exception as exc:  # noqa: BLE001 - a decoder bug is this video's error, not the batch's
            return VideoError("decode-failed", f"video decode failed: {mask_text(first_line(exc))}"), size, mtime, etag

    def _item(self, video: SampledVideo) -> VideoItem:
        notes = list(video.notes)
        if self.sequence_model is None:
            notes.append(PER_FRAME_NOTE if self.why_per_frame is None else f"{PER_FRAME_NOTE}: {self.why_per_frame}")
        if self.faces is None:
            tracks, found = [VideoTrack(self._whole_frames(video.frames), [None] * len(video.frames))], None
        else:
            tracks, found = self._face_tracks(video)
        return VideoItem(video.indices, video.timestamps_s, video.duration_s, tracks, found, notes,
                         sequence=self.sequence_model is not None, pre=self.pre)

    def _face_tracks(self, video: SampledVideo) -> tuple[list[VideoTrack], int]:
        faces = self.faces
        assert faces is not None
        with self._detect_lock:
            found = self._detect_frames(video.frames)
        failed = [f for f in found if isinstance(f, ImageError)]
        if len(failed) == len(found):
            raise VideoError("face-detect-failed", failed[0].message)
        per_frame = []
        for frame, boxes in zip(video.frames, found):
            if isinstance(boxes, ImageError):
                per_frame.append([])
                continue
            selected, _n = select_faces(boxes, frame.shape[1], frame.shape[0], faces.options)
            per_frame.append([((x1, y1, x2, y2), score) for x1, y1, x2, y2, score in selected])
        tracks, n_found = follow(per_frame, faces.options.max_faces)
        out = []
        for track in tracks:
            boxes = []
            for frame, (x1, y1, x2, y2) in zip(video.frames, track.filled()):
                # Boxes are stored in the video's own (upright) pixels, whatever the frames were scaled to.
                s = video.width / frame.shape[1]
                bx, by = int(round(x1 * s)), int(round(y1 * s))
                boxes.append((bx, by, max(1, int(round(x2 * s)) - bx), max(1, int(round(y2 * s)) - by)))
            out.append(VideoTrack(self._track_crops(video.frames, track.filled()), boxes))
        return out, n_found

    # The pixel work, which device-resident batches do on tensors (workers.scoring.tensors.DeviceVideoStage).

    def _whole_frames(self, frames: list) -> np.ndarray:
        """Faces off: the frames at the model's input size, (t, H, W, 3) uint8."""
        return np.stack([_resized(frame, self.pre.size) for frame in frames])

    def _detect_frames(self, frames: list) -> list:
        assert self.faces is not None
        return self.faces.detect(frames)

    def _track_crops(self, frames: list, boxes: list) -> np.ndarray:
        """One track's crops, (t, H, W, 3) uint8: each frame's square of margin x its box, at the model's size."""
        assert self.faces is not None
        return np.stack([np.asarray(crop_faces(frame, [(*box, 0.0)], self.faces.options, self.pre.size)[0][0])
                         for frame, box in zip(frames, boxes)])

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self.sampler is not None:
            self.sampler.close()


def _resized(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A whole frame at the model's input size (H, W), resized as an image is (:func:`workers.images.decode.to_tensor`)."""
    h, w = size
    if frame.shape[:2] == (h, w):
        return frame
    return np.asarray(Image.fromarray(frame).resize((w, h), Image.Resampling.BILINEAR))


def video_stage(res: "Resources") -> VideoStage | None:
    """The scan's video stage (None: videos are off); a sequence graph's runtime joins ``res.runtimes``."""
    settings, info = res.settings, res.info
    if not settings.video_extensions:
        return None
    why = sequence_model = None
    if info.video_model is not None and not info.video_model.is_file():
        # A model folder copied without its sequence graph: videos are still scored, per frame, and
        # every such row says why (a sequence graph that is there but broken fails the scan instead).
        why = f"{info.video_model.name}, named by the model's sidecar, is not beside {info.path.name}"
    elif info.video_model is not None:
        from dfscan.trt.model_info import inspect_video_model

        sequence = inspect_video_model(info)
        res.runtimes["sequence"] = sequence_runtime(res, sequence)
        sequence_model = str(sequence.path)
    options = VideoOptions.from_settings(settings, info.frames)
    if sequence_model is not None:
        _check_frames(res.runtimes["sequence"], options.frames)
    sampler = video_sampler(settings.decoder, options, res.pre, threads=settings.decode_threads,
                            batch_size=settings.batch_size)
    faces = res.face_decoder()
    return VideoStage(res.pre, options, faces=None if faces is None else faces.finder, sequence_model=sequence_model,
                      threads=settings.decode_threads, why_per_frame=why, sampler=sampler, store=res.store)


def sequence_runtime(res: "Resources", sequence) -> "Runtime":
    """The video graph's runtime: the one the image graph runs on (torch, TensorRT or ONNX Runtime), never a second.

    One model session per graph, both on one runtime: a GPU worker scores sequences on its GPU, and a torch
    worker holds no ONNX Runtime session beside its programs.
    """
    from dfscan.trt.registry import load_graph_runtime

    s = res.settings
    return load_graph_runtime(res.runtimes.get("image"), sequence, intra_op_threads=s.intra_op_threads,
                              precision=s.precision, engine_dir=s.engine_dir)


def _check_frames(runtime: "Runtime", frames: int) -> None:
    """A runtime whose sequences have a longest T (the torch program's, a TensorRT profile's) must take the scan's."""
    limit = getattr(runtime, "max_frames", None)
    if limit is not None and frames > limit:
        raise SettingsError(
            f"{frames} frames per video is more than the {runtime.name} runtime's video graph takes ({limit}, the "
            f"length it was exported or built for); scan with --frames {limit} or fewer, or re-export the model "
            f"with `dfscan export --frames {frames}`"
        )


def video_sampler(decoder: str, options: VideoOptions, pre: Preprocess, *, threads: int = 2, batch_size: int = 64):
    """DALI's video sampler for a scan whose image decoder is ``decoder`` (:data:`VIDEO_SAMPLERS`), or None: PyAV."""
    from dfscan.workers.images import dali_device, resolve_decoder

    name = resolve_decoder(decoder).name
    device = VIDEO_SAMPLERS[name].device if name in VIDEO_SAMPLERS else None
    if device is None:
        return None
    from dfscan.workers.video.dali import DaliVideoSampler

    # A batch of ``batch_size`` frames holds at most batch_size // T videos: DALI's batch is that.
    return DaliVideoSampler(device=dali_device() if device == "auto" else device,
                            batch_size=max(1, batch_size // options.frames), threads=threads,
                            max_side=options.max_side, max_pixels=pre.max_pixels)
