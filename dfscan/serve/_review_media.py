"""The review page's pictures: a re-encoded thumbnail with face boxes, a video's flagged track as a strip.

Never the raw file: every picture is decoded by the scanner's own reader and decoder and encoded again
(JPEG), so what the browser gets is pixels dfscan made, whatever the stored file holds.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

from dfscan.htmlkit import FAKE_COLOUR, flagged_track, thumbnail

__all__ = ["image_jpeg", "strip_jpeg"]

Box = tuple[int, int, int, int]


def image_jpeg(path: str, boxes: Sequence[Box], px: int, store=None,
               roots: Sequence[str] | None = None) -> tuple[bytes | None, str]:
    """``(JPEG, "")`` of ``path`` fitted in ``px`` with ``boxes`` (original pixels) drawn, or ``(None, reason)``."""
    from PIL import Image, ImageDraw

    uri, reason, full = thumbnail(path, px, store, roots)
    if uri is None:
        return None, reason
    data = base64.b64decode(uri.split(",", 1)[1])
    if not boxes or full is None:
        return data, ""
    im = Image.open(io.BytesIO(data), formats=["JPEG"]).convert("RGB")
    sx, sy = im.width / full[0], im.height / full[1]
    draw = ImageDraw.Draw(im)
    for x, y, w, h in boxes:
        draw.rectangle([x * sx, y * sy, (x + w) * sx, (y + h) * sy], outline=FAKE_COLOUR, width=2)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue(), ""


def strip_jpeg(path: str, frames: list[dict], px: int, store=None,
               roots: Sequence[str] | None = None) -> tuple[bytes | None, str]:
    """The flagged track's sampled frames read again at their times, side by side, face boxes drawn; one JPEG."""
    from PIL import Image, ImageDraw

    from dfscan.workers.reading.errors import ImageError
    from dfscan.workers.video.sample import frames_at

    _track, strip = flagged_track(frames)
    if not strip:
        return None, "no frames recorded"
    try:
        video = frames_at(path, [t for _i, t, _b, _p in strip], max_side=px, time_limit_s=30.0, store=store,
                          roots=roots)
    except ImageError as exc:
        return None, exc.message
    except Exception as exc:  # noqa: BLE001 - a picture that fails is a reason, not an error page
        return None, f"no preview: {type(exc).__name__}"
    by_slot = dict(zip(video.indices, video.frames))
    cells = []
    for slot, (_index, _t, box, _p) in enumerate(strip):
        frame = by_slot.get(slot)
        if frame is None:
            continue
        im = Image.fromarray(frame).convert("RGB")
        scale = min(1.0, px / max(im.width, im.height))
        if box is not None:
            x, y, w, h = box
            ImageDraw.Draw(im).rectangle([x, y, x + w, y + h], outline=FAKE_COLOUR, width=max(2, im.width // 100))
        im.thumbnail((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
        cells.append(im)
    if not cells:
        return None, "no frame decoded"
    width = sum(c.width for c in cells) + 4 * (len(cells) - 1)
    sheet = Image.new("RGB", (width, max(c.height for c in cells)), "white")
    x = 0
    for c in cells:
        sheet.paste(c, (x, 0))
        x += c.width + 4
    buf = io.BytesIO()
    sheet.save(buf, format="JPEG", quality=80)
    return buf.getvalue(), ""
