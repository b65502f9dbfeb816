"""Sample a video's T frames with NVIDIA DALI's video decoder: NVDEC on the GPU (``mixed``), or DALI's CPU decoder.

DALI's ``fn.decoders.video`` (``fn.experimental.decoders.video`` is its deprecated
alias in DALI 2.x; ``fn.readers.video`` reads files itself and is GPU-only)
decodes encoded bytes handed to it by an external source, and picks frames by
**index** (``frames=[...]``, per sample), not by time. So the frames are chosen
the way :func:`workers.video.sample_video` chooses them, on the CPU with PyAV,
without decoding the stream:

1. demux the file's packets (times only) and sort their presentation times:
   frame *i* of DALI's numbering is the *i*-th of them (checked against PyAV in
   the tests, B-frames included);
2. target *k* is the middle of the *k*-th of T equal slices of the stream's
   length (the same length and formula as the PyAV sampler), and its frame is
   the last one whose time is at or before it;
3. DALI decodes those indices; a target that lands on the frame of the target
   before it has none (as with PyAV), and the frames are turned upright with
   the display matrix's rotation and downscaled to ``max_side`` on the host.

The rotation is read from the first decoded frame (PyAV exposes the display
matrix on frames only): one extra frame's decode per video, on the CPU.

What DALI decodes where (DALI 2.4, the pip wheel): the CPU backend takes VP8,
VP9 and MJPEG only (its FFmpeg has no H.264/HEVC decoder); the mixed backend
also takes H.264, HEVC, AV1 and MPEG-4 (NVDEC). :data:`DALI_VIDEO_CODECS` is
what this worker hands to each; a video in another codec, one whose plan fails,
one DALI fails on (found by bisecting the batch, the pipeline rebuilt, as for
images), or one larger than ``max_bytes`` (DALI decodes from memory: the whole
file is read) is sampled by PyAV instead, which either scores it or says why
not. DALI's decode cannot be interrupted, so the per-file time limit bounds the
planning pass only; the size limit is what bounds DALI's share.

MJPEG is left out of the CPU table: DALI 2.4's CPU video decoder killed the
process (SIGSEGV, no exception) on an MJPEG AVI whose every frame had noise in
its scan data (PyAV refuses that file with a reason). Random corruption raised
a normal error that the bisection handles. Which sampler a scan uses follows its
image decoder (:func:`workers.scoring.video_stage.video_sampler`): ``dali-gpu`` (and
``dali`` or ``auto`` where DALI has a GPU) samples with DALI ``mixed``,
``dali-cpu`` (and ``dali`` without a GPU) with DALI's CPU backend, ``pillow``
with PyAV alone; ``s3://`` videos are always PyAV's (it streams them; DALI
would need the whole object in memory).
"""

from __future__ import annotations

import bisect
import io
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from dfscan.workers.reading.dali_runs import build_or_unavailable, run_locating
from dfscan.workers.reading.errors import ImageError, VideoError
from dfscan.workers.video.sample import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    DEFAULT_TIME_LIMIT_S,
    SampledVideo,
    _container,
    _is_cover_art,
    _open_error,
    sample_video,
)

# FFmpeg codec names each DALI backend decodes (DALI 2.4 documentation of fn.decoders.video, and measured:
# the CPU variant refuses h264 with "Codec 27 (h264) is not supported by the CPU variant of this operator").
# MJPEG decodes on the CPU backend too, but crashed the process on corrupt scan data (module docstring).
DALI_VIDEO_CODECS: dict[str, frozenset[str]] = {
    "cpu": frozenset({"vp8", "vp9"}),
    "gpu": frozenset({"vp8", "vp9", "mjpeg", "h264", "hevc", "av1", "mpeg4"}),
}
DEFAULT_MAX_BYTES = 512 << 20  # DALI decodes from memory: larger files go to PyAV, which streams them
ENCODED, FRAMES = "encoded", "frames"


@dataclass(frozen=True)
class FramePlan:
    """Which frames of one video to decode: DALI's frame numbers for the targets that have a frame of their own."""

    indices: list[int]  # targets (0..requested-1) that have a frame, as SampledVideo.indices
    frame_numbers: list[int]  # each one's frame, numbered in presentation order (DALI's ``frames``)
    timestamps_s: list[float]
    duration_s: float | None
    width: int
    height: int
    requested: int
    codec: str
    container: str
    rotation: int
    notes: tuple[str, ...] = field(default_factory=tuple)


def plan_frames(path: str, data: bytes, frames: int, *, time_limit_s: float = DEFAULT_TIME_LIMIT_S,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> FramePlan:
    """The frames :func:`workers.video.sample_video` would take from ``data`` (the bytes of ``path``), by number.

    Demuxes the whole file for the packets' times (no decoding but the first
    frame's, for its rotation); raises :class:`VideoError` as the PyAV sampler does.
    """
    import av

    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    deadline = time.monotonic() + time_limit_s
    spec, _ = _container(path)  # not confined: no descriptor stays open
    try:
        container = av.open(io.BytesIO(data), format=spec.demuxer, metadata_errors="replace")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise _open_error(exc, spec, path) from None
    try:
        notes: list[str] = []
        videos = [s for s in container.streams.video if not _is_cover_art(s, av)]
        if not videos:
            raise VideoError("no-video-stream", f"no video stream in the {spec.name} file")
        if len(videos) > 1:
            notes.append(f"{len(videos)} video streams; took the first")
        stream = videos[0]
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width <= 0 or height <= 0:
            raise VideoError("decode-failed", f"video stream has no frame size ({ctx.name or 'unknown codec'})")
        if width * height > max_pixels:
            raise VideoError("too-many-pixels", f"too many pixels: {width}x{height} frames exceed the limit of "
                                                f"{max_pixels}")
        tb = stream.time_base or Fraction(1, 1_000_000)
        start = stream.start_time if stream.start_time is not None else 0
        times, rotation = _presentation_times(container, stream, deadline, time_limit_s)
        if not times:
            raise VideoError("no-frames", "the video stream holds no frames")
        duration = _duration(stream, container, tb, start, times)
        if duration is None:
            notes.append("the video's length is unknown: sampled from its start")
            targets = [start] * frames
        else:
            targets = [start + int(math.floor((k + 0.5) * duration / frames)) for k in range(frames)]
        indices, numbers = [], []
        for k, target in enumerate(targets):
            number = max(0, bisect.bisect_right(times, target) - 1)  # the frame on screen at the target
            if numbers and numbers[-1] == number:
                continue
            indices.append(k)
            numbers.append(number)
        if len(numbers) < frames:
            notes.append(f"{frames - len(numbers)} of {frames} times fell on a frame already taken (fewer frames "
                         f"than {frames}, or frames held long): {len(numbers)} distinct frames")
        upright = (height, width) if rotation % 180 else (width, height)
        return FramePlan(
            indices=indices, frame_numbers=numbers, timestamps_s=[float((times[n] - start) * tb) for n in numbers],
            duration_s=float(duration * tb) if duration is not None else None, width=upright[0], height=upright[1],
            requested=frames, codec=ctx.name or "", container=spec.name, rotation=rotation, notes=tuple(notes),
        )
    finally:
        container.close()


def _presentation_times(container, stream, deadline: float, limit_s: float) -> tuple[list[int], int]:
    """Every packet's presentation time, sorted (DALI numbers frames in this order), and the display rotation."""
    import av

    times: list[int] = []
    rotation = None
    for packet in container.demux(stream):
        if time.monotonic() > deadline:
            raise VideoError("timeout", f"reading the video's index took longer than {limit_s:g} s")
        if packet.pts is None:
            continue
        times.append(int(packet.pts))
        if rotation is None:
            try:
                decoded = packet.decode()
            except av.error.FFmpegError:
                decoded = []
            if decoded:
                rotation = int(round(decoded[0].rotation or 0)) % 360
    return sorted(times), rotation or 0


def _duration(stream, container, tb: Fraction, start: int, times: list[int]) -> int | None:
    """The stream's length in its time base, found in the PyAV sampler's order (stream, container, index, packets)."""
    if stream.duration:
        return int(stream.duration)
    if container.duration:
        return int(Fraction(container.duration, 1_000_000) / tb)
    entries = stream.index_entries
    last = int(entries[len(entries) - 1].timestamp) if len(entries) else times[-1]
    return max(last - start, 0) or None


class DaliVideoSampler:
    """``sample_batch(paths, frames) -> [SampledVideo | VideoError]``: DALI decodes, PyAV plans and stands in."""

    def __init__(self, *, device: str = "cpu", batch_size: int = 8, threads: int = 2, device_id: int = 0,
                 max_side: int | None = DEFAULT_MAX_SIDE, max_bytes: int = DEFAULT_MAX_BYTES,
                 codecs: frozenset[str] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        if device not in DALI_VIDEO_CODECS:
            raise ValueError(f"device must be one of {', '.join(DALI_VIDEO_CODECS)}, got {device!r}")
        import nvidia.dali

        self.device = device
        self.name = f"dali-video-{device}"
        self.version = nvidia.dali.__version__
        self.batch_size = batch_size
        self.threads = threads
        self.device_id = device_id
        self.max_side = max_side
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.codecs = DALI_VIDEO_CODECS[device] if codecs is None else frozenset(codecs)
        self.stats: Counter = Counter()
        self._pipe = None
        self._lock = threading.Lock()

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        gpu = self.device == "gpu"

        @pipeline_def(batch_size=self.batch_size, num_threads=self.threads,
                      device_id=self.device_id if gpu else None, prefetch_queue_depth=1)
        def graph():
            encoded = fn.external_source(name=ENCODED, dtype=types.UINT8)
            numbers = fn.external_source(name=FRAMES, dtype=types.INT32)
            return fn.decoders.video(encoded, device="mixed" if gpu else "cpu", frames=numbers)

        pipe = graph()
        pipe.build()
        self.stats["builds"] += 1
        return pipe

    def _run(self, datas: list[np.ndarray], numbers: list[np.ndarray]) -> list[np.ndarray]:
        if self._pipe is None:
            self._pipe = build_or_unavailable(self._build, f"{self.device} video pipeline")
        (out,) = self._pipe.run(**{ENCODED: datas, FRAMES: numbers})
        if self.device == "gpu":
            out = out.as_cpu()
        return [np.asarray(out[i]) for i in range(len(datas))]

    def _run_locating(self, datas: list[np.ndarray], numbers: list[np.ndarray]) -> list[np.ndarray | None]:
        """DALI's frames per sample; ``None`` for each sample that fails the batch, found by bisection."""

        def dropped() -> None:
            self.stats["failed_runs"] += 1
            self._pipe = None  # a pipeline that failed is not reused (NVIDIA/DALI#3913)

        return run_locating(lambda part: self._run([d for d, _ in part], [n for _, n in part]),
                            list(zip(datas, numbers)), dropped)

    def sample_batch(self, paths: Sequence[str], frames: int, *, time_limit_s: float = DEFAULT_TIME_LIMIT_S
                     ) -> list[SampledVideo | ImageError]:
        """T frames of each video, as :func:`workers.video.sample_video` takes them; a failure is that video's error."""
        results: list[SampledVideo | ImageError | None] = [None] * len(paths)
        todo: list[tuple[int, FramePlan, np.ndarray]] = []
        for i, path in enumerate(paths):
            try:
                plan, data = self._plan(path, frames, time_limit_s)
            except (ImageError, OSError):
                plan = None  # PyAV, the reference, decides: it scores the file or gives its reason
            if plan is None:  # a codec DALI doesn't decode here, a file too large for memory, or a failed plan
                results[i] = self._pyav(path, frames, time_limit_s)
            else:
                todo.append((i, plan, data))
        with self._lock:
            for start in range(0, len(todo), self.batch_size):
                part = todo[start : start + self.batch_size]
                outs = self._run_locating([d for _, _, d in part],
                                          [np.asarray(p.frame_numbers, np.int32) for _, p, _ in part])
                for (i, plan, _), out in zip(part, outs):
                    if out is None:
                        self.stats["dali_failed"] += 1
                        results[i] = self._pyav(paths[i], frames, time_limit_s)
                    else:
                        self.stats["dali"] += 1
                        results[i] = self._sampled(plan, out)
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _plan(self, path: str, frames: int, time_limit_s: float) -> tuple[FramePlan | None, np.ndarray | None]:
        _container(path)  # a missing, unreadable or irregular file (a FIFO: never opened to wait) is PyAV's to say
        size = os.path.getsize(path)
        if size > self.max_bytes:
            return None, None
        with open(path, "rb") as fh:
            data = fh.read()
        plan = plan_frames(path, data, frames, time_limit_s=time_limit_s, max_pixels=self.max_pixels)
        if plan.codec not in self.codecs:
            return None, None
        return plan, np.frombuffer(data, dtype=np.uint8)

    def _pyav(self, path: str, frames: int, time_limit_s: float) -> SampledVideo | ImageError:
        self.stats["pyav"] += 1
        try:
            return sample_video(path, frames, time_limit_s=time_limit_s, max_side=self.max_side,
                                max_pixels=self.max_pixels)
        except ImageError as exc:
            return exc

    def _sampled(self, plan: FramePlan, decoded: np.ndarray) -> SampledVideo:
        from PIL import Image

        notes = list(plan.notes)
        out = []
        for frame in decoded:
            h, w = frame.shape[:2]
            scale = 1.0 if not self.max_side else min(1.0, self.max_side / max(w, h))
            if scale < 1.0:
                w2, h2 = max(2, int(round(w * scale))), max(2, int(round(h * scale)))
                frame = np.asarray(Image.fromarray(frame).resize((w2, h2), Image.Resampling.BILINEAR))
                if f"frames downscaled from {w}x{h} to {w2}x{h2}" not in notes:
                    notes.append(f"frames downscaled from {w}x{h} to {w2}x{h2}")
            if plan.rotation:
                frame = np.rot90(frame, k=int(round(plan.rotation / 90)) % 4)  # counter-clockwise, as PyAV's
            out.append(np.ascontiguousarray(frame))
        return SampledVideo(
            frames=out, indices=list(plan.indices), timestamps_s=list(plan.timestamps_s), duration_s=plan.duration_s,
            width=plan.width, height=plan.height, requested=plan.requested, codec=plan.codec,
            container=plan.container, rotation=plan.rotation, decoded=len(out), notes=tuple(notes),
        )

    def close(self) -> None:
        self._pipe = None
