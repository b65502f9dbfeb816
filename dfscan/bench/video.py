"""``dfscan bench --videos``: videos/s and sampled frames/s for 1080p clips, and what seeking buys.

Rows:

* ``video sample (16 frames, 1080p)``: :func:`workers.video.sample_video` alone on each clip
  (open, seek, decode, convert to RGB): the sampling cost on its own;
* ``scan end-to-end, videos``: the real in-process scan of the same clips (sampling, the model on
  16-frame sequences, the rows), videos/s and frames/s;
* ``video sample 10-min`` and ``video sample 10-s``: 16 frames from a 10-minute video and from a
  10-second one of the same size, frame rate and keyframe interval; the report prints their ratio
  (seeking keeps it near 1; decoding the whole stream would make it 60).

The clips are written here with PyAV (H.264, a keyframe every 2 s as phones and
streaming encoders write them): scikit-image's coffee photograph panning, so
frames differ as in a real video.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dfscan.bench import stages
from dfscan.core.errors import first_line
from dfscan.bench.records import Row

__all__ = ["CLIP_SIZE", "SEEK_SIZE", "video_rows", "write_clip"]

CLIP_SIZE = (1920, 1080)
CLIP_FPS = 30
CLIP_SECONDS = 5
SEEK_SIZE = (320, 180)
SEEK_FPS = 10
GOP_SECONDS = 2
FRAMES = 16


def write_clip(path: Path, seconds: float, fps: int, size: tuple[int, int], gop: int, shift: int = 0) -> Path:
    """An H.264 MP4 of ``seconds``: coffee panning sideways, a keyframe every ``gop`` frames."""
    import av
    import numpy as np
    from PIL import Image
    from skimage import data

    w, h = size
    pan = max(1, w // 8)
    wide = np.asarray(Image.fromarray(data.coffee()).resize((w + pan, h)))
    count = int(round(seconds * fps))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(gop), "x264-params": f"keyint={gop}:scenecut=0"}
        for i in range(count):
            x = (shift + i) % (2 * pan)
            x = x if x < pan else 2 * pan - x
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(wide[:, x : x + w]), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def video_rows(options: Any, info: Any, work: Path, say: Callable[[str], None],
               scan_settings: Callable[..., Any]) -> tuple[list[Row], dict[str, Any]]:
    """The video rows, and the figures for the closing note (videos/s, frames/s, the 10-min / 10-s ratio)."""
    from dfscan.workers.video.sample import sample_video

    folder = work / "videos"
    folder.mkdir(parents=True, exist_ok=True)
    say(f"writing {options.video_count} 1080p clips of {CLIP_SECONDS} s")
    try:
        clips = [write_clip(folder / f"clip_{i:03d}.mp4", CLIP_SECONDS, CLIP_FPS, CLIP_SIZE, GOP_SECONDS * CLIP_FPS,
                            shift=7 * i) for i in range(options.video_count)]
    except ImportError as exc:
        reason = f"needs PyAV and scikit-image ({exc})"
        return [Row("video", "sample (16 frames, 1080p)", "skipped", reason=reason)], {}
    source = f"{len(clips)} H.264 clips of {CLIP_SIZE[0]}x{CLIP_SIZE[1]}, {CLIP_SECONDS} s at {CLIP_FPS} fps"
    rows: list[Row] = []
    figures: dict[str, Any] = {"frames": FRAMES, "clips": source}

    say("sampling 16 frames per clip")
    decoded = [0]

    def sample_all() -> int:
        decoded[0] = sum(sample_video(str(p), FRAMES).decoded for p in clips)
        return len(clips)

    try:
        t = stages.timed(sample_all, options.min_seconds)
        rows.append(Row("video", "sample (16 frames, 1080p)", "ok", t.images, t.seconds, t.images_per_s,
                        t.peak_rss_mib, t.start_rss_mib, t.repeats,
                        details={"frames_per_s": t.images_per_s * FRAMES, "decoded_per_video": decoded[0] / len(clips),
                                 "videos": source}))
        figures["sample_videos_per_s"] = t.images_per_s
    except Exception as exc:  # noqa: BLE001 - a row that failed, the run goes on
        rows.append(Row("video", "sample (16 frames, 1080p)", "failed", reason=first_line(exc)))

    say("scan of the clips")
    try:
        run = stages.measure_scan(scan_settings(info, "videos.db", frames=FRAMES), folder)
        t, s = run.timing, run.summary
        rows.append(Row("scan", "end-to-end, videos", "ok", t.images, t.seconds, t.images_per_s, t.peak_rss_mib,
                        t.start_rss_mib, 1, details={"frames_per_s": t.images_per_s * FRAMES, "ok": s.ok,
                                                     "errors": s.errors, "videos": source,
                                                     "scoring": (run.audit.get("video") or {}).get("scoring")}))
        figures["scan_videos_per_s"] = t.images_per_s
    except Exception as exc:  # noqa: BLE001
        rows.append(Row("scan", "end-to-end, videos", "failed", reason=first_line(exc)))

    say("writing a 10-minute and a 10-second video to compare the sampling")
    gop = GOP_SECONDS * SEEK_FPS
    seek = {"10-min": write_clip(folder.parent / "long.mp4", 600, SEEK_FPS, SEEK_SIZE, gop),
            "10-s": write_clip(folder.parent / "short.mp4", 10, SEEK_FPS, SEEK_SIZE, gop)}
    per_video: dict[str, float] = {}
    for name, path in seek.items():
        cost = [0]

        def sample_one(path: Path = path, cost: list[int] = cost) -> int:
            cost[0] = sample_video(str(path), FRAMES).decoded
            return 1

        try:
            t = stages.timed(sample_one, options.min_seconds)
        except Exception as exc:  # noqa: BLE001
            rows.append(Row("video", f"sample {name}", "failed", reason=first_line(exc)))
            continue
        per_video[name] = t.seconds / t.images
        rows.append(Row("video", f"sample {name}", "ok", t.images, t.seconds, t.images_per_s, t.peak_rss_mib,
                        t.start_rss_mib, t.repeats,
                        details={"decoded_frames": cost[0], "size": f"{SEEK_SIZE[0]}x{SEEK_SIZE[1]}",
                                 "fps": SEEK_FPS, "keyframe_every_s": GOP_SECONDS,
                                 "bytes": path.stat().st_size}))
    if len(per_video) == 2:
        figures["long_over_short"] = per_video["10-min"] / per_video["10-s"]
        figures["seconds_per_video"] = per_video
    return rows, figures
