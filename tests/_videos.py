"""Test videos written with PyAV itself: codecs and containers, rotation, VFR, and broken files.

Each frame carries its own index as a 4x4 grid of black and white blocks
(16 bits, readable after lossy coding), so a test can tell which frame the
sampler took, and so whether it took the frame on screen at the time it asked.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Codec:
    encoder: str
    suffix: str
    pix_fmt: str
    options: dict[str, str] = field(default_factory=dict)


CODECS: dict[str, Codec] = {
    "h264-mp4": Codec("libx264", ".mp4", "yuv420p", {"preset": "ultrafast", "tune": "zerolatency"}),
    "vp9-webm": Codec("libvpx-vp9", ".webm", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}),
    "mjpeg-avi": Codec("mjpeg", ".avi", "yuvj420p", {}),
    "h264-mkv": Codec("libx264", ".mkv", "yuv420p", {"preset": "ultrafast", "tune": "zerolatency"}),
}


def index_frame(i: int, width: int = 64, height: int = 48) -> np.ndarray:
    """An RGB frame showing ``i`` as 16 bits in a 4x4 grid of black/white blocks."""
    out = np.zeros((height, width, 3), np.uint8)
    bh, bw = height // 4, width // 4
    for bit in range(16):
        if (i >> bit) & 1:
            r, c = divmod(bit, 4)
            out[r * bh : (r + 1) * bh, c * bw : (c + 1) * bw] = 255
    return out


def read_index(frame: np.ndarray) -> int:
    """The index :func:`index_frame` drew, read back from a decoded (possibly resized) frame."""
    h, w = frame.shape[:2]
    bh, bw = h / 4, w / 4
    value = 0
    for bit in range(16):
        r, c = divmod(bit, 4)
        block = frame[int(r * bh + bh / 4) : int((r + 1) * bh - bh / 4), int(c * bw + bw / 4) : int((c + 1) * bw - bw / 4)]
        if block.mean() > 128:
            value |= 1 << bit
    return value


def write_video(
    path: str | Path,
    count: int,
    *,
    codec: str = "h264-mp4",
    fps: int = 10,
    size: tuple[int, int] = (64, 48),
    gop: int | None = None,
    draw: Callable[[int], np.ndarray] | None = None,
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    rotation: int | None = None,
    second_video: bool = False,
) -> Path:
    """Write ``count`` frames (``draw(i)``, default :func:`index_frame`) at ``fps``; returns the path.

    ``pts`` with ``time_base`` gives each frame its own time (variable frame
    rate); ``rotation`` writes a display matrix (counter-clockwise degrees, as
    FFmpeg and PyAV count them: -90 is a phone held upright); ``second_video``
    adds a second, different video stream.
    """
    import av

    spec = CODECS[codec]
    path = Path(path)
    width, height = size
    draw = draw or (lambda i: index_frame(i, width, height))
    with av.open(str(path), "w") as container:
        streams = [_video_stream(container, spec, fps, width, height, gop, time_base)]
        if rotation is not None:
            streams[0].set_display_rotation(rotation)
        if second_video:
            streams.append(_video_stream(container, spec, fps, width // 2 * 2, height // 2 * 2, gop, time_base))
        for i in range(count):
            for n, stream in enumerate(streams):
                picture = draw(i) if n == 0 else np.full((height, width, 3), 128, np.uint8)
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
                frame.pts = pts[i] if pts is not None else i
                if time_base is not None:
                    frame.time_base = time_base
                for packet in stream.encode(frame):
                    container.mux(packet)
        for stream in streams:
            for packet in stream.encode():
                container.mux(packet)
    return path


def _video_stream(container, spec: Codec, fps: int, width: int, height: int, gop: int | None,
                  time_base: Fraction | None):
    stream = container.add_stream(spec.encoder, rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, spec.pix_fmt
    options = dict(spec.options)
    if gop is not None:
        options["g"] = str(gop)
        if spec.encoder == "libx264":
            options["x264-params"] = f"keyint={gop}:min-keyint={min(gop, 250)}:scenecut=0"
    stream.options = options
    if time_base is not None:
        stream.codec_context.time_base = time_base
        stream.time_base = time_base
    return stream


def write_audio_only(path: str | Path, seconds: float = 1.0) -> Path:
    """An MP4 holding one AAC audio stream and no video."""
    import av

    path = Path(path)
    rate = 44100
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        t = np.arange(int(rate * seconds)) / rate
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, len(samples), 1024):
            chunk = samples[start : start + 1024][None, :]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def truncate_without_moov(path: Path) -> Path:
    """Cut an MP4 (moov at its end, as FFmpeg writes it) to its first half: what an interrupted copy leaves."""
    data = path.read_bytes()
    assert data.find(b"moov") > len(data) // 2, "the moov atom is not at the end"
    path.write_bytes(data[: len(data) // 2])
    return path


def corrupt_packets(path: Path, fraction: tuple[float, float] = (0.3, 0.6), seed: int = 0) -> int:
    """Overwrite the payload of the video packets in ``fraction`` of the stream with noise; returns how many."""
    import av

    with av.open(str(path)) as container:
        entries = container.streams.video[0].index_entries
        spots = [(int(e.pos), int(e.size)) for e in entries]
    lo, hi = int(len(spots) * fraction[0]), int(len(spots) * fraction[1])
    rng = np.random.default_rng(seed)
    data = bytearray(path.read_bytes())
    for pos, size in spots[lo:hi]:
        data[pos : pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return hi - lo


def tkhd_matrix(path: Path) -> tuple[int, ...]:
    """The first track header's display matrix (a, b, u, c, d, v, x, y, w), read from the MP4's bytes."""
    data = path.read_bytes()
    i = data.find(b"tkhd")
    version = data[i + 4]
    # version/flags, creation and modification time, track id, reserved, duration, reserved, layer..volume
    offset = i + 4 + 4 + (8 + 8 if version == 1 else 4 + 4) + 4 + 4 + (8 if version == 1 else 4) + 8 + 8
    return struct.unpack(">9i", data[offset : offset + 36])


# The astronaut's face patch of scikit-image's astronaut() (as tests/test_faces.py pastes it) and the face in it.
PATCH_BOX = (150, 30, 300, 200)
PATCH_FACE = (31.0, 32.0, 118.0, 142.0)


def write_face_video(path: str | Path, count: int, placements: Callable[[int], list[tuple[int, int, float]]], *,
                     fps: int = 10, size: tuple[int, int] = (640, 360)) -> Path:
    """An MJPEG video of astronaut faces pasted on scikit-image's coffee at ``placements(i)`` = [(x, y, scale)]."""
    from PIL import Image
    from skimage import data

    background = Image.fromarray(data.coffee()).resize(size)
    patch = Image.fromarray(data.astronaut()).crop(PATCH_BOX)

    def draw(i: int) -> np.ndarray:
        im = background.copy()
        for x, y, s in placements(i):
            im.paste(patch.resize((round(patch.width * s), round(patch.height * s)), Image.Resampling.BILINEAR), (x, y))
        return np.asarray(im)

    return write_video(path, count, codec="mjpeg-avi", fps=fps, size=size, draw=draw)


def face_box(x: int, y: int, s: float) -> tuple[float, float, float, float]:
    """Where the face is when :func:`write_face_video` pastes the patch at (x, y) scaled by s."""
    fx1, fy1, fx2, fy2 = PATCH_FACE
    return (x + fx1 * s, y + fy1 * s, x + fx2 * s, y + fy2 * s)
