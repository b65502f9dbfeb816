"""Sample T frames of a video, evenly spaced in time, by seeking (PyAV, which bundles FFmpeg).

A video's verdict comes from T frames (default 16) spread over its length:
target *k* is the middle of the *k*-th of T equal slices of the video, and its
frame is the one on screen at that time (the last frame whose timestamp is at
or before it, so variable frame rates sample by time, not by frame count).
Each target is reached by seeking to the keyframe before it and decoding
forward, unless the decoder already stands between that keyframe and the
target (then it decodes on): a 10-minute video costs about what a 10-second
one does, never a decode of the whole stream.  The container's index
(``stream.index_entries``) says where the keyframes are; without one, targets
closer than :data:`FORWARD_S` are decoded on to.

PyAV opens the path itself and reads it in small blocks: a video is never
read into memory whole, and may be larger than the image reader's limit.  A
scan confined to its roots (``roots``, :mod:`scanner.confine`) opens the file
itself, with no symbolic link on its path, and hands PyAV that open file.  An
``s3://`` video is read the same way over HTTP, from a presigned URL, seeking
with Range requests (:mod:`workers.video._objects`); its messages never hold
that URL.
Frames come out as upright RGB (the display matrix of phone videos applied),
downscaled so that their longer side is at most ``max_side``: sixteen 8K
frames would otherwise hold 1.6 GB.

Every way a file can fail is a :class:`~dfscan.workers.reading.errors.VideoError`
with a code of :data:`~dfscan.workers.reading.errors.REASONS`; what was odd but still
scored (two video streams, frames that did not decode, fewer frames than
asked) is said in :attr:`SampledVideo.notes`.  A per-file time limit bounds
the whole sampling: checked between packets, and inside FFmpeg's blocking
reads through PyAV's interrupt callback.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from dfscan.scanner.confine import root_of
from dfscan.scanner.objects import is_object_url
from dfscan.core.constants import DEFAULT_FRAMES, DEFAULT_MAX_PIXELS
from dfscan.core.errors import first_line
from dfscan.core.settings import DEFAULT_VIDEO_EXTENSIONS
from dfscan.workers.video._containers import SIGNATURE_BYTES, ContainerSpec, container_for, what_else
from dfscan.workers.reading.errors import ImageError, VideoError
from dfscan.workers.reading.reader import open_local

# DEFAULT_MAX_PIXELS applies as for images: to the coded frame's pixels, checked before decoding.
DEFAULT_TIME_LIMIT_S = 60.0
# Longer side of the frames handed on (the face stage crops from them; the model's input is 224).
DEFAULT_MAX_SIDE = 1920
# Without a container index, a target this close ahead is decoded on to rather than sought.
FORWARD_S = 1.0
# Video file name extensions the walker takes (configurable: Settings.video_extensions).
VIDEO_EXTENSIONS = DEFAULT_VIDEO_EXTENSIONS

__all__ = [
    "DEFAULT_FRAMES",
    "DEFAULT_TIME_LIMIT_S",
    "SampledVideo",
    "VIDEO_EXTENSIONS",
    "VideoError",
    "frames_at",
    "is_video_path",
    "pyav_version",
    "sample_video",
]


@dataclass(frozen=True)
class SampledVideo:
    """The frames sampled from one video, in time order.

    ``indices[i]`` is the target (0..requested-1) that ``frames[i]`` answers;
    a target whose frame did not decode, or that fell on the same frame as the
    target before it (a video with fewer frames than asked), has none.
    ``timestamps_s`` are the frames' own presentation times, in seconds from
    the start of the stream.  ``width``/``height`` are the upright size of the
    video; the frames may be smaller (``max_side``).  ``decoded`` counts every
    frame the decoder produced on the way, the cost of the sampling.
    """

    frames: list[np.ndarray]
    indices: list[int]
    timestamps_s: list[float]
    duration_s: float | None
    width: int
    height: int
    requested: int
    codec: str = ""
    container: str = ""
    rotation: int = 0
    decoded: int = 0  # frames decoded to find them: the sampling's cost (seeking keeps it near T x GOP / 2)
    notes: tuple[str, ...] = field(default_factory=tuple)


def is_video_path(path: str, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> bool:
    return os.path.splitext(path)[1].lower() in extensions


def pyav_version() -> str:
    import av

    return f"PyAV {av.__version__}"


def sample_video(
    path: str,
    frames: int = DEFAULT_FRAMES,
    *,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    max_side: int | None = DEFAULT_MAX_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    threads: int = 1,
    store=None,
    roots: Sequence[str] | None = None,
) -> SampledVideo:
    """``frames`` frames of the video at ``path``, evenly spaced in time; raises :class:`VideoError`.

    ``path`` may be an ``s3://`` URL, read through ``store`` (a :class:`~dfscan.scanner.objects.ObjectStore`;
    None: the default endpoint's).  ``roots``: a file under them is opened with no link followed.
    """
    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    deadline = time.monotonic() + time_limit_s
    source, container = _open(path, time_limit_s, frames, store, roots)
    with _closing(container, source):
        return _Sampler(container, source.spec, frames, deadline, time_limit_s, max_side, max_pixels, threads).run()


def frames_at(
    path: str,
    times_s: Sequence[float],
    *,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    max_side: int | None = DEFAULT_MAX_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    store=None,
    roots: Sequence[str] | None = None,
) -> SampledVideo:
    """The frames on screen at ``times_s`` (seconds from the stream's start, ascending): a scan's stored
    timestamps give back the frames it scored (the report's strip, the hash stage with faces on).  Same
    errors, ``store`` and ``roots`` as :func:`sample_video`."""
    if not times_s:
        raise ValueError("no times given")
    deadline = time.monotonic() + time_limit_s
    source, container = _open(path, time_limit_s, len(times_s), store, roots)
    with _closing(container, source):
        sampler = _Sampler(container, source.spec, len(times_s), deadline, time_limit_s, max_side, max_pixels, 1)
        sampler.at_s = sorted(float(t) for t in times_s)
        return sampler.run()


# -- opening ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """What :func:`_open` opened: its container spec and, for an object, what keeps its presigned URL secret."""

    spec: ContainerSpec
    missing_index: Callable[[], str | None]  # why the container looks cut short (None: it doesn't)
    remote: Any = None  # the ObjectVideo of an s3:// video (workers.video._objects); None for a file
    fd: int | None = None  # the file, opened here (a confined scan's); None: PyAV opens the path

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)

    def error(self, exc: BaseException, path: str) -> VideoError:
        """The row's reason for a container FFmpeg refused to open."""
        if self.remote is None:
            return _open_error(exc, self.spec, path, self.missing_index)
        found = self.remote.http_error(exc) or _open_error(exc, self.spec, path, self.missing_index)
        return VideoError(found.code, self.remote.clean(found.message))


def _open(path: str, time_limit_s: float, requested: int, store=None, roots: Sequence[str] | None = None):
    """The source and the open PyAV container (its one demuxer named); raises :class:`VideoError`."""
    import av

    target: Any
    if is_object_url(path):
        from dfscan.scanner.objects import object_store
        from dfscan.workers.video._objects import open_object

        video = open_object(path, store if store is not None else object_store(), time_limit_s)
        source, target, options = _Source(video.spec, video.missing_index, video), video.presigned, video.options
    else:
        spec, fd = _container(path, roots)
        source = _Source(spec, lambda: _local_missing_index(spec, path, fd), fd=fd)
        # The open file itself (its /proc link names exactly that file, whatever the path now leads to).
        target, options = path if fd is None else f"/proc/self/fd/{fd}", None
    try:
        container = av.open(target, format=source.spec.demuxer, options=options,
                            timeout=(time_limit_s, time_limit_s), metadata_errors="replace")
    except av.error.ExitError:
        source.close()
        raise _timeout(time_limit_s, 0, requested) from None
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        try:
            raise source.error(exc, path) from None
        finally:
            source.close()
    return source, container


@contextmanager
def _closing(container, source: _Source):
    """Close ``container`` after use; an object's unforeseen errors leave as its row's reason, the URL cleaned out."""
    try:
        yield
    except VideoError:
        raise
    except Exception as exc:
        if source.remote is None:
            raise  # a file's: the video stage makes it a decode-failed row, as before
        error = source.remote.http_error(exc) or VideoError(
            "decode-failed", f"video decode failed: {source.remote.clean(first_line(exc))}")
        raise error from None
    finally:
        container.close()
        source.close()


def _container(path: str, roots: Sequence[str] | None = None) -> tuple[ContainerSpec, int | None]:
    """The container spec from the file's first bytes; the reader's reasons for a file that can't be read.

    Under ``roots`` the file stays open (reached with no link followed) and its descriptor comes back;
    otherwise it is closed (None) and PyAV opens the path.
    """
    try:
        fd = open_local(path, roots)  # regular files only; O_NONBLOCK: a FIFO swapped in never blocks
    except ImageError as exc:
        raise VideoError(exc.code, exc.message) from None
    try:
        spec = _spec_of(fd)
    except BaseException:
        os.close(fd)
        raise
    if root_of(path, roots) is None:
        os.close(fd)
        return spec, None
    return spec, fd


def _spec_of(fd: int) -> ContainerSpec:
    try:
        head = os.pread(fd, SIGNATURE_BYTES, 0)
    except OSError as exc:
        raise VideoError("unreadable", f"read failed: {exc.strerror or exc}") from None
    if not head:
        raise VideoError("empty", "empty file")
    spec = container_for(head)
    if spec is None:
        raise VideoError("not-video", f"not a video: the file is {what_else(head)} (named like a video)")
    return spec


def _local_missing_index(spec: ContainerSpec, path: str, fd: int | None = None) -> str | None:
    if spec.missing_index is None:
        return None
    if fd is not None:
        return spec.missing_index(lambda offset, n: os.pread(fd, n, offset), os.fstat(fd).st_size)
    with open(path, "rb") as fh:
        def read_at(offset: int, n: int) -> bytes:
            fh.seek(offset)
            return fh.read(n)

        return spec.missing_index(read_at, os.fstat(fh.fileno()).st_size)


def _open_error(exc: BaseException, spec: ContainerSpec, path: str,
                missing_index: Callable[[], str | None] | None = None) -> VideoError:
    """The row's reason for a container FFmpeg refused; ``missing_index`` says why it looks cut short."""
    text = first_line(exc).split(": '")[0]  # FFmpeg's message without the path (or URL) it appends
    if isinstance(exc, FileNotFoundError):
        return VideoError("missing", "file not found (vanished since it was listed)")
    if isinstance(exc, PermissionError):
        return VideoError("unreadable", "permission denied")
    missing = (missing_index or (lambda: _local_missing_index(spec, path)))()
    if missing:
        return VideoError("truncated", f"truncated {spec.name.upper()}: {missing}")
    if "end of file" in text.lower():
        return VideoError("truncated", f"truncated {spec.name} file: {text}")
    return VideoError("not-video", f"unreadable {spec.name} container: {text}")


def _timeout(limit: float, got: int, requested: int) -> VideoError:
    return VideoError("timeout", f"decoding took longer than the {limit:g} s limit per video "
                                 f"({got} of {requested} frames sampled)")


# -- sampling -----------------------------------------------------------------------------


class _Sampler:
    """One pass over one open container: pick the stream, plan the targets, seek and decode to each."""

    def __init__(self, container, spec: ContainerSpec, requested: int, deadline: float, limit_s: float,
                 max_side: int | None, max_pixels: int, threads: int) -> None:
        self.container = container
        self.spec = spec
        self.requested = requested
        self.deadline = deadline
        self.limit_s = limit_s
        self.max_side = max_side
        self.max_pixels = max_pixels
        self.threads = threads
        self.notes: list[str] = []
        self.bad_packets: set[int] = set()  # times of the packets that failed (a packet may be met twice)
        self.out_frames: list[np.ndarray] = []
        self.out_indices: list[int] = []
        self.out_pts: list[int] = []
        self.rotation = 0
        self.decoded = 0
        self.duplicates = 0  # targets that fell on a frame already taken
        self.at_s: list[float] | None = None  # explicit times (frames_at) instead of T evenly spaced ones
        # The decoder's state: the frames iterator since the last seek, the last frame decoded (pts, frame;
        # None after a seek), a frame decoded beyond the last target (kept for the next), and the packets
        # that failed since the last good frame (a target in such a gap has no frame).
        self._frames_iter = None
        self._prev = None
        self._pending = None
        self._errors_since_prev = 0

    def run(self) -> SampledVideo:
        import av

        stream = self._stream()
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width <= 0 or height <= 0:
            raise VideoError("decode-failed", f"video stream has no frame size ({ctx.name or 'unknown codec'})")
        if width * height > self.max_pixels:
            raise VideoError("too-many-pixels",
                             f"too many pixels: {width}x{height} frames exceed the limit of {self.max_pixels}")
        ctx.thread_type = "AUTO"
        ctx.thread_count = self.threads
        self.stream = stream
        tb = stream.time_base or Fraction(1, 1_000_000)
        self.tb = tb
        start = stream.start_time if stream.start_time is not None else 0
        duration = self._duration_pts(stream, start)
        targets = self._targets(start, duration)
        keyframes = sorted({int(e.timestamp) for e in stream.index_entries if e.is_keyframe}) \
            if len(stream.index_entries) else []
        try:
            for k, target in enumerate(targets):
                self._take(k, target, keyframes)
        except av.error.ExitError:
            raise _timeout(self.limit_s, len(self.out_frames), self.requested) from None
        rotation = self.rotation
        missing = self.requested - len(self.out_frames) - self.duplicates
        if not self.out_frames:
            detail = f"; {len(self.bad_packets)} packets failed to decode" if self.bad_packets else ""
            raise VideoError("no-frames", f"none of the {self.requested} sampled frames could be decoded{detail}")
        if missing > 0:
            self.notes.append(f"{missing} of {self.requested} frames could not be decoded")
        if self.duplicates:
            self.notes.append(f"{self.duplicates} of {self.requested} times fell on a frame already taken (fewer "
                              f"frames than {self.requested}, or frames held long): {len(self.out_frames)} "
                              f"distinct frames")
        if self.bad_packets:
            self.notes.append(f"{len(self.bad_packets)} packets failed to decode")
        up_w, up_h = (height, width) if rotation % 180 else (width, height)
        seconds = [float((p - start) * tb) for p in self.out_pts]
        return SampledVideo(
            frames=self.out_frames,
            indices=self.out_indices,
            timestamps_s=seconds,
            duration_s=float(duration * tb) if duration is not None else None,
            width=up_w,
            height=up_h,
            requested=self.requested,
            codec=ctx.name or "",
            container=self.spec.name,
            rotation=rotation,
            decoded=self.decoded,
            notes=tuple(self.notes),
        )

    # -- planning ---------------------------------------------------------------------------

    def _stream(self):
        import av

        videos = [s for s in self.container.streams.video if not _is_cover_art(s, av)]
        if not videos:
            kinds = sorted({s.type for s in self.container.streams})
            has = f"only {', '.join(kinds)} streams" if kinds else "no streams"
            raise VideoError("no-video-stream", f"no video stream in the {self.spec.name} file ({has})")
        if len(videos) > 1:
            self.notes.append(f"{len(videos)} video streams; took the first")
        stream = videos[0]
        for other in self.container.streams:
            if other is not stream:
                other.discard = av.stream.Discard.all  # never demuxed into the decode loop
        return stream

    def _duration_pts(self, stream, start: int) -> int | None:
        """The stream's length in its time base: from the stream, the container, the index, or a demux pass."""
        if stream.duration:
            return int(stream.duration)
        if self.container.duration:
            return int(Fraction(self.container.duration, 1_000_000) / self.tb)
        entries = stream.index_entries
        if len(entries):
            return max(int(entries[len(entries) - 1].timestamp) - start, 0) or None
        # No length anywhere (a stream being written, an odd muxer): read the packets' times, no decoding.
        last = None
        for packet in self.container.demux(stream):
            self._check_time()
            if packet.pts is not None:
                last = packet.pts if last is None else max(last, packet.pts)
        self.container.seek(start, stream=stream, backward=True)
        if last is None or last <= start:
            return None
        return last - start

    def _targets(self, start: int, duration: int | None) -> list[int]:
        if self.at_s is not None:
            return [start + int(round(t / self.tb)) for t in self.at_s]
        if duration is None or duration <= 0:
            self.notes.append("the video's length is unknown: sampled from its start")
            return [start] * self.requested
        return [start + int(math.floor((k + 0.5) * duration / self.requested)) for k in range(self.requested)]

    # -- decoding ---------------------------------------------------------------------------

    def _take(self, k: int, target: int, keyframes: list[int]) -> None:
        """Find the frame on screen at ``target`` and keep it (as target ``k``)."""
        here = self._prev[0] if self._prev is not None else None
        if here is None or target < here or not self._decode_on(here, target, keyframes):
            self._seek(target)
        chosen = None
        while True:
            if self._pending is not None:
                item, self._pending = self._pending, None
            else:
                item = self._next_frame()
            if item is None:  # end of stream: the last frame is on screen to the end
                if self._prev is not None and self._errors_since_prev == 0:
                    chosen = self._prev
                break
            pts, frame = item
            if pts > target:
                if self._prev is not None and self._errors_since_prev == 0:
                    chosen = self._prev  # on screen from its time until this one's
                elif self._prev is None:
                    # The seek landed after the target: that frame is the nearest we have, unless
                    # packets failed on the way to it (then the target's own frame was lost).
                    chosen = item if self._errors_since_prev == 0 else None
                    self._prev, self._errors_since_prev = item, 0
                    break
                self._pending = item
                break
            self._prev, self._errors_since_prev = item, 0
        if chosen is None:
            return
        pts, frame = chosen
        if self.out_pts and pts == self.out_pts[-1]:
            self.duplicates += 1
            return
        self.out_frames.append(self._rgb(frame))
        self.out_indices.append(k)
        self.out_pts.append(pts)

    def _decode_on(self, here: int, target: int, keyframes: list[int]) -> bool:
        """Decode on from ``here`` to ``target`` rather than seek: no keyframe between them to jump to."""
        if keyframes:
            import bisect

            i = bisect.bisect_right(keyframes, target) - 1
            return i < 0 or keyframes[i] <= here
        return float((target - here) * self.tb) <= FORWARD_S

    def _seek(self, target: int) -> None:
        import av

        self._check_time()
        try:
            self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
        except av.error.ExitError:
            raise
        except av.error.FFmpegError:
            # Some files can't seek (no index); decode on from where the demuxer stands.
            _note_once(self.notes, "the file could not seek: decoded forward")
        self._frames_iter = self._frames()
        self._prev = None
        self._pending = None
        self._errors_since_prev = 0

    def _next_frame(self):
        if self._frames_iter is None:
            self._frames_iter = self._frames()
        return next(self._frames_iter, None)

    def _frames(self):
        """(pts, frame) of every frame decoded from where the demuxer stands; bad packets are counted, skipped."""
        import av

        last_pts = None
        for packet in self.container.demux(self.stream):
            self._check_time()
            try:
                decoded = packet.decode()
            except av.error.ExitError:
                raise
            except (av.error.FFmpegError, ValueError):
                self.bad_packets.add(packet.pts if packet.pts is not None else -1 - len(self.bad_packets))
                self._errors_since_prev += 1
                continue
            for frame in decoded:
                self.decoded += 1
                if getattr(frame, "is_corrupt", False):
                    self.bad_packets.add(frame.pts if frame.pts is not None else -1 - len(self.bad_packets))
                    self._errors_since_prev += 1
                    continue
                pts = frame.pts if frame.pts is not None else frame.dts
                if pts is None:
                    pts = 0 if last_pts is None else last_pts + 1
                last_pts = pts
                yield pts, frame

    def _check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise _timeout(self.limit_s, len(self.out_frames), self.requested)

    def _rgb(self, frame) -> np.ndarray:
        """The frame as upright RGB uint8 (H, W, 3), its longer side at most ``max_side``."""
        w, h = frame.width, frame.height
        scale = 1.0 if not self.max_side else min(1.0, self.max_side / max(w, h))
        if scale < 1.0:
            w2, h2 = max(2, int(round(w * scale))), max(2, int(round(h * scale)))
            arr = frame.to_ndarray(format="rgb24", width=w2, height=h2)
            _note_once(self.notes, f"frames downscaled from {w}x{h} to {w2}x{h2}")
        else:
            arr = frame.to_ndarray(format="rgb24")
        rotation = self.rotation = int(round(frame.rotation or 0)) % 360
        if rotation:
            # PyAV's rotation is counter-clockwise, as np.rot90's k: -90 is a phone held upright.
            arr = np.rot90(arr, k=int(round(rotation / 90)) % 4)
        return np.ascontiguousarray(arr)


def _note_once(notes: list[str], note: str) -> None:
    if note not in notes:
        notes.append(note)


def _is_cover_art(stream, av) -> bool:
    disposition = getattr(stream, "disposition", 0)
    flag = getattr(getattr(av.stream, "Disposition", None), "attached_pic", None)
    try:
        return bool(flag is not None and disposition & flag)
    except TypeError:
        return False
