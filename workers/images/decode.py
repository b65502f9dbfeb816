"""Decode image bytes into normalised CHW float32 arrays with Pillow.

This is the reference decoder: the embedded default, the one training uses
(so what the model learnt and what it is shown are made the same way), and the
one the DALI path is checked against.
"""

from __future__ import annotations

import io
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from dfscan.core.constants import DEFAULT_MAX_DECODE_BYTES, DEFAULT_MAX_PIXELS
from dfscan.core.errors import first_line
from dfscan.workers.reading.reader import Header, sniff
from dfscan.workers.reading.errors import ImageError
from dfscan.workers.reading.reader import FileData

# Decoders outside this list are never tried: several rarely used Pillow
# plugins have had memory-safety bugs, and no archive of photos needs them.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")  # JPEG also opens MPO files


@dataclass(frozen=True)
class Preprocess:
    """How the model wants its input: size (H, W), normalisation, and the pixel and decoded-byte limits."""

    size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES

    def scale_and_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """``x * a + b`` equals ``(x / 255 - mean) / std`` per channel."""
        std = np.asarray(self.std, dtype=np.float32)
        a = (1.0 / (255.0 * std)).reshape(3, 1, 1)
        b = (-np.asarray(self.mean, dtype=np.float32) / std).reshape(3, 1, 1)
        return a.astype(np.float32), b.astype(np.float32)


def refuse_from_header(data: bytes | Header, max_pixels: int | None) -> ImageError | None:
    """Why ``data`` (the first bytes of a file are enough, or their sniffed header) can't be an image we decode.

    A signature none of :data:`ALLOWED_FORMATS` has is refused as Pillow would
    refuse it; a header that declares more than ``max_pixels`` is refused
    without a byte of pixels read or decoded.
    """
    header = data if isinstance(data, Header) else sniff(data)
    if header.format is None:
        return ImageError("not-image", "not an image file (format not recognised)")
    pixels = header.pixels
    if max_pixels is not None and pixels is not None and pixels > max_pixels:
        return _too_many(header.width, header.height, max_pixels)
    return None


def _too_many(w: int | None, h: int | None, max_pixels: int) -> ImageError:
    return ImageError("too-many-pixels", f"too many pixels: {w}x{h} exceeds the limit of {max_pixels}")


def open_image(data: bytes, max_pixels: int, header: Header | None = None,
               max_bytes: int | None = None) -> Image.Image:
    """Open ``data`` lazily (header only) and check its size; raises :class:`ImageError`.

    This is ``Image.open`` without its decompression-bomb check: that check
    reads the process-global ``Image.MAX_IMAGE_PIXELS`` and reports through
    the process-global warnings filter, so it could neither follow
    ``--max-pixels`` nor be turned into an error safely from several decode
    threads.  The size is checked here, against ``max_pixels``, from the
    header the plugin parsed, and so is the memory decoding it takes
    (:func:`decoded_bytes`) against ``max_bytes`` (None: no byte budget).
    Both decoders call this.
    """
    refusal = refuse_from_header(header or data, max_pixels)
    if refusal is not None:
        raise refusal
    im = None
    why = ""
    try:
        Image.preinit()
        fp = io.BytesIO(data)
        prefix = data[:16]
        for fmt in ALLOWED_FORMATS:
            if fmt not in Image.OPEN:
                Image.init()
            if fmt not in Image.OPEN:  # a plugin this Pillow build lacks
                continue
            factory, accept = Image.OPEN[fmt]
            if accept is not None:
                ok = accept(prefix)
                if not ok or isinstance(ok, str):
                    continue
            fp.seek(0)
            try:
                im = factory(fp, "")
                break
            except (SyntaxError, IndexError, TypeError, struct.error) as exc:  # Image.open: "not this format"
                why = first_line(exc)
    except (OSError, ValueError, EOFError, MemoryError, Image.DecompressionBombError) as exc:
        raise ImageError("not-image", f"unreadable image header: {first_line(exc)}") from None
    if im is None:
        if why:
            raise ImageError("not-image", f"unreadable image header: {why}")
        raise ImageError("not-image", "not an image file (format not recognised)")
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError("decode-failed", f"invalid image size {w}x{h}")
    if w * h > max_pixels:
        raise _too_many(w, h, max_pixels)
    if max_bytes is not None:
        try:
            method = _transpose_method(im, loaded=False)
        except Exception:  # noqa: BLE001 - broken EXIF: decoding the image reports it
            method = None
        check_budget(im, method, max_bytes)
    return im


def load_rgb(data: bytes, size: tuple[int, int] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
             header: Header | None = None, max_bytes: int | None = DEFAULT_MAX_DECODE_BYTES) -> Image.Image:
    """Decode ``data`` to an 8-bit RGB image with its EXIF orientation applied.

    ``size`` (H, W) lets JPEG decode in draft mode at 1/2, 1/4 or 1/8 scale
    while staying at least that large: for previews (reports) only.  The
    model's input never uses it (:func:`decode_one`): DALI has no such mode,
    and both decoders must feed the model the same image (draft mode moved
    pixels by up to 6 grey levels).  ``dfscan bench`` shows what it costs.

    An image whose decoding would hold more than ``max_bytes`` (:func:`decoded_bytes`)
    is refused before its pixels are decoded (``too-large-decoded``); each
    conversion frees its source as soon as its result exists.
    """
    im = open_image(data, max_pixels, header, max_bytes)
    try:
        if size is not None and im.format in ("JPEG", "MPO"):
            im.draft("RGB", (size[1], size[0]))
        im.load()
        method = _transpose_method(im, loaded=True)
        if max_bytes is not None and method is not None:  # a PNG's eXIf after its pixels: known only now
            check_budget(im, method, max_bytes)
        return _converted(im, method, owned=True)
    except ImageError:
        raise
    except Image.DecompressionBombError:  # a GIF frame larger than Pillow's own limit
        raise ImageError("too-many-pixels", "too many pixels in a frame") from None
    except OSError as exc:
        text = str(exc)
        if "truncated" in text or "broken data stream" in text or "premature end" in text.lower():
            raise ImageError("truncated", "truncated image data") from None
        raise ImageError("decode-failed", f"decode failed: {first_line(exc)}") from None
    except (SyntaxError, ValueError, TypeError, EOFError, MemoryError) as exc:
        raise ImageError("decode-failed", f"decode failed: {first_line(exc)}") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB (``im`` itself is left as it is).

    16- and 32-bit integer and float images are rescaled to 0..255 instead of
    being clipped (Pillow's own ``convert`` saturates them to white); palette
    images with transparency go through RGBA, as Pillow recommends.
    """
    return _converted(im, None, owned=False)


# -- memory -----------------------------------------------------------------------------------

# EXIF orientation -> the transposition that shows the image upright (ImageOps.exif_transpose's table).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Rows of a high-bit-depth image rescaled at a time: a strip of float64 stays near 4 MB whatever the image.
_STRIP_BYTES = 4 << 20


def _high_bit(mode: str) -> bool:
    return mode.startswith("I;16") or mode in ("I", "F")


def _stored_bytes(mode: str) -> int:
    """Bytes per pixel as Pillow holds ``mode``: one for 1, L and P, two for I;16, four for the rest (RGB too)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def decoded_bytes(im: Image.Image, transposed: bool = False) -> int:
    """The most bytes :func:`load_rgb` holds at once for ``im`` (opened, not yet decoded).

    The decoded pixels, then each conversion beside its source: a 16-bit or
    float image rescaled to 8-bit grey, the orientation's transposition (when
    ``transposed``), a palette with transparency through RGBA, and RGB.  A
    9459x9459 16-bit grey PNG takes 5 bytes a pixel (447 MB); a plain RGB
    JPEG 4 (RGB is held in 4 bytes a pixel).
    """
    mode = im.mode
    held = peak = _stored_bytes(mode)
    if _high_bit(mode):
        mode, held, peak = "L", 1, held + 1
    if transposed:
        peak = max(peak, 2 * held)
    if mode == "P" and "transparency" in im.info:
        mode, held, peak = "RGBA", 4, max(peak, held + 4)
    if mode != "RGB":
        peak = max(peak, held + 4)
    return peak * im.width * im.height


def check_budget(im: Image.Image, method: Image.Transpose | None, max_bytes: int) -> None:
    """Raise ``too-large-decoded`` when decoding ``im`` would take more than ``max_bytes``."""
    need = decoded_bytes(im, method is not None)
    if need > max_bytes:
        raise ImageError("too-large-decoded", f"decoding {im.width}x{im.height} {im.mode} pixels takes {need} bytes, "
                                              f"over the {max_bytes}-byte budget")


def _transpose_method(im: Image.Image, *, loaded: bool) -> Image.Transpose | None:
    """The transposition the image's EXIF (or XMP) orientation asks for.

    Before loading, a PNG whose EXIF is not in its header says nothing yet
    (reading it would decode the pixels): :func:`load_rgb` asks again after.
    """
    if not loaded and im.format == "PNG" and "exif" not in im.info:
        return None
    return _TRANSPOSE.get(im.getexif().get(ExifTags.Base.Orientation, 1))


def _converted(im: Image.Image, method: Image.Transpose | None, *, owned: bool) -> Image.Image:
    """``im`` as 8-bit RGB, transposed by ``method``, holding as little at once as the steps allow.

    Each step's source is closed once its result exists, ``im`` too when
    ``owned`` (the caller hands it over).  The results equal Pillow's
    ``exif_transpose`` then the old whole-image conversions, pixel for pixel.
    """
    steps: list[Image.Image] = [im]

    def step(new: Image.Image) -> None:
        old = steps[-1]
        if owned or old is not im:
            old.close()
        steps.append(new)

    if _high_bit(im.mode):
        step(_to_grey(im))
        if method is not None:
            step(steps[-1].transpose(method))
    elif method is not None:
        if not owned:
            step(im.copy())
        ImageOps.exif_transpose(steps[-1], in_place=True)  # also drops the orientation from the metadata
    out = steps[-1]
    if out.mode == "P" and "transparency" in out.info:
        step(out.convert("RGBA"))
        out = steps[-1]
    if out.mode != "RGB":
        step(out.convert("RGB"))
    elif out is im and not owned:
        im.load()
    return steps[-1]


def _to_grey(im: Image.Image) -> Image.Image:
    """A 16/32-bit integer or float image rescaled to 8-bit L, a strip of rows at a time.

    The same arithmetic as rescaling the whole float64 array at once (so the
    same bytes), without ever holding more than a strip of it.
    """
    mode = im.mode
    w, h = im.size
    rows = max(1, _STRIP_BYTES // (8 * max(w, 1)))

    def strips():
        for y in range(0, h, rows):
            yield y, np.asarray(im.crop((0, y, w, min(h, y + rows))), dtype=np.float64)

    if mode.startswith("I;16"):
        top = 65535.0
    else:
        hi = float(np.max([a.max(initial=0) for _, a in strips()]))
        top = (65535.0 if hi > 255 else 255.0) if mode == "I" else max(hi, 1.0)
    out = np.empty((h, w), dtype=np.uint8)
    for y, a in strips():
        out[y : y + a.shape[0]] = np.clip(a * (255.0 / top), 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def resized(im: Image.Image, pre: Preprocess) -> Image.Image:
    """``im`` at the model's input size ``pre.size`` (Pillow's BILINEAR, which widens its filter to downscale)."""
    h, w = pre.size
    if im.size != (w, h):
        im = im.resize((w, h), Image.Resampling.BILINEAR)
    return im


def to_tensor(im: Image.Image, pre: Preprocess) -> np.ndarray:
    """Resize to ``pre.size`` and normalise: (3, H, W) float32."""
    arr = np.asarray(resized(im, pre), dtype=np.float32).transpose(2, 0, 1)
    a, b = pre.scale_and_shift()
    return arr * a + b


def decode_one(data: bytes, pre: Preprocess, *, draft: bool = False, header: Header | None = None) -> np.ndarray:
    """The model's input for ``data``: full decode, no JPEG draft mode unless ``draft`` (the bench compares)."""
    return to_tensor(load_rgb(data, pre.size if draft else None, pre.max_pixels, header, pre.max_decode_bytes), pre)


class PillowDecoder:
    """Decodes a batch in a thread pool; Pillow releases the GIL while decoding."""

    name = "pillow"
    thread_safe = True  # one decoder may serve concurrent requests (dfscan serve)
    device = "cpu"

    def __init__(self, pre: Preprocess, threads: int = 2) -> None:
        self.pre = pre
        self.version = Image.__version__ if hasattr(Image, "__version__") else _pil_version()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")

    def decode_batch(self, files: Sequence[FileData]) -> list[np.ndarray | ImageError]:
        return list(self._pool.map(self._decode_safely, files))

    def decode_pixels_batch(self, files: Sequence[FileData]) -> list[np.ndarray | ImageError]:
        """Each image at the model's size before normalisation, (H, W, 3) uint8: for batches normalised on a device."""
        return list(self._pool.map(lambda f: self._decode_safely(f, pixels=True), files))

    def _decode_safely(self, f: FileData, pixels: bool = False) -> np.ndarray | ImageError:
        try:
            if pixels:
                im = load_rgb(f.data, None, self.pre.max_pixels, f.header, self.pre.max_decode_bytes)
                return np.asarray(resized(im, self.pre))
            return decode_one(f.data, self.pre, header=f.header)
        except ImageError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - any decoder bug is this image's error, not the batch's
            return ImageError("decode-failed", f"decode failed: {first_line(exc)}")

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _pil_version() -> str:
    import PIL

    return PIL.__version__
