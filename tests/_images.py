"""Real image files written by the tests: good ones in every mode, and every kind of bad one."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def pattern(seed: int, size: tuple[int, int] = (256, 256)) -> Image.Image:
    """A deterministic RGB image with structure (gradients and blocks), not flat noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack(
        [
            (x * rng.uniform(0.2, 1.0) + y * rng.uniform(0.0, 0.5)) % 256,
            (y * rng.uniform(0.2, 1.0) + 40 * np.sin(x / rng.uniform(5, 30))) % 256,
            ((x + y) * rng.uniform(0.1, 0.7)) % 256,
        ],
        axis=-1,
    )
    base += rng.normal(0, 8, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def write_jpegs(folder: Path, n: int, size: tuple[int, int] = (256, 256), start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        p = folder / f"img_{i:05d}.jpg"
        pattern(i, size).save(p, quality=90)
        paths.append(p)
    return paths


def jpeg_bytes(seed: int = 0, size: tuple[int, int] = (256, 256), **save: object) -> bytes:
    buf = io.BytesIO()
    pattern(seed, size).save(buf, format="JPEG", quality=90, **save)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height``: a decompression bomb's calling card."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def write_mode_zoo(folder: Path) -> dict[str, Path]:
    """One file per awkward mode the decoder must turn into RGB."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = pattern(7)
    out: dict[str, Path] = {}

    def save(name: str, im: Image.Image, **kw: object) -> None:
        p = folder / name
        im.save(p, **kw)
        out[name] = p

    save("gray.png", rgb.convert("L"))
    save("bilevel.png", rgb.convert("1"))
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pal.info["transparency"] = 0
    save("palette_transparent.png", pal, transparency=0)
    rgba = rgb.copy()
    rgba.putalpha(128)
    save("rgba.png", rgba)
    save("cmyk.jpg", rgb.convert("CMYK"), quality=90)
    arr16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    save("gray16.png", Image.fromarray(arr16))
    save("photo.webp", rgb, quality=80)
    save("photo.bmp", rgb)
    save("photo.gif", rgb.convert("P"))
    save("photo.tiff", rgb)
    save("UPPER.JPEG", rgb, quality=85)
    # EXIF orientation 6: stored landscape, shown rotated 90 degrees.
    exif = Image.Exif()
    exif[0x0112] = 6
    save("rotated.jpg", pattern(8, (320, 200)), exif=exif.tobytes(), quality=90)
    return out


def write_bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Bad inputs and the error_code each must end with."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, str]] = {}
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    out["empty"] = (empty, "empty")
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(jpeg_bytes(3)[:2000])
    out["truncated"] = (truncated, "truncated")
    text = folder / "notes.jpg"
    text.write_bytes(b"this is not an image, just text with an image extension\n" * 20)
    out["not-image"] = (text, "not-image")
    bomb = folder / "bomb.png"
    bomb.write_bytes(png_header_only(50_000, 50_000))
    out["bomb"] = (bomb, "too-many-pixels")
    return out
