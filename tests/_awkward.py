"""An "awkward corpus": the kind of files image libraries keep for their own tests, written here.

There is no internet, so instead of downloading a public corpus this writes a
few dozen small files with Pillow, and with raw PNG chunk bytes where Pillow
can't write the awkward part itself.  Each entry says what it exercises.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from tests._images import pattern

ORIENTATION = 0x0112
# Files stored as the pattern turned upside down, with metadata saying "rotate 180".
ROTATED = ("rot_exif.png", "rot_xmp.png", "rot_rawprofile.png", "rot_exif_after_idat.png", "rot_xmp.jpg",
           "rot_exif.jpg", "rot_exif.webp")
# Files Pillow refuses over their metadata; both decoders must refuse them too.
REFUSED_METADATA = ("ztxt_bomb.png", "itxt_bomb.png", "iccp_method1.png", "ztxt_bomb_after_idat.png")


# Paths that text formats and SQL quoting trip over: stored and read back unchanged (tests/test_db.py,
# tests/test_copy_write.py).
AWKWARD_PATHS = [
    "/data/caf\u00e9/\u5199\u771f.jpg",
    "/data/a,b,c.png",
    "/data/it's \"quoted\".jpg",
    "/data/line\nbreak.jpg",
    "/data/tab\tand\\backslash.jpg",
    "/data/emoji \U0001f600.webp",
    "/data/semi;colon -- not sql'); DROP TABLE results;--.jpg",
]


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_with(im: Image.Image, before_idat: list[bytes] = (), after_idat: list[bytes] = ()) -> bytes:
    """A PNG of ``im`` with extra raw chunks spliced in before the first IDAT and before IEND."""
    buf = io.BytesIO()
    im.save(buf, "PNG")
    data = buf.getvalue()
    first_idat = data.index(b"IDAT") - 4
    iend = data.rindex(b"IEND") - 4
    return data[:first_idat] + b"".join(before_idat) + data[first_idat:iend] + b"".join(after_idat) + data[iend:]


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif


def _xmp(orientation: int) -> str:
    return (
        '<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        f'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="{orientation}"/></rdf:RDF>'
        '</x:xmpmeta><?xpacket end="w"?>'
    )


def _raw_profile(exif_bytes: bytes) -> str:
    """ImageMagick's "Raw profile type exif" text: a name line, a length line, then hex."""
    hexed = exif_bytes.hex()
    lines = [hexed[i : i + 72] for i in range(0, len(hexed), 72)]
    return "\nexif\n" + f"{len(exif_bytes):8d}\n" + "\n".join(lines) + "\n"


def _bmp(width: int, height: int, bits: int, pixels: bytes, palette: bytes = b"", compression: int = 0,
         masks: bytes = b"") -> bytes:
    header_size = 40 + len(masks)
    offset = 14 + header_size + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, compression, len(pixels), 2835, 2835,
                       len(palette) // 4, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + masks + palette + pixels


class _Corpus:
    """Writes files into ``folder`` and remembers them: name -> path."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.out: dict[str, Path] = {}

    def put(self, name: str, data: bytes) -> None:
        (self.folder / name).write_bytes(data)
        self.out[name] = self.folder / name

    def save(self, name: str, im: Image.Image, **kw: object) -> None:
        buf = io.BytesIO()
        im.save(buf, format=kw.pop("format", None) or name.rsplit(".", 1)[1].upper().replace("JPG", "JPEG")
                .replace("TIF", "TIFF").replace("TIFFF", "TIFF"), **kw)
        self.put(name, buf.getvalue())


def write_awkward(folder: Path) -> dict[str, Path]:
    """Write the corpus into ``folder``; name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = _Corpus(folder)
    base = pattern(21, (240, 160))
    _write_rotated(corpus, base.transpose(Image.Transpose.ROTATE_180))
    _write_refused_metadata(corpus, base)
    _write_plain(corpus, base)
    _write_hand_made_bmps(corpus)
    _write_large_and_damaged(corpus, base)
    return corpus.out


def _write_rotated(corpus: _Corpus, flipped: Image.Image) -> None:
    """Orientation that only Pillow used to apply: :data:`ROTATED`."""
    corpus.save("rot_exif.png", flipped, exif=_exif(3).tobytes())  # eXIf chunk before IDAT
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", _xmp(3))
    corpus.save("rot_xmp.png", flipped, pnginfo=info)
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", _raw_profile(_exif(3).tobytes()), zip=True)
    corpus.save("rot_rawprofile.png", flipped, pnginfo=info)
    corpus.put("rot_exif_after_idat.png", _png_with(flipped, after_idat=[chunk(b"eXIf", _exif(3).tobytes()[6:])]))
    corpus.save("rot_xmp.jpg", flipped, quality=92, xmp=_xmp(3).encode())
    corpus.save("rot_exif.jpg", flipped, quality=92, exif=_exif(3).tobytes())
    corpus.save("rot_exif.webp", flipped, quality=90, exif=_exif(3).tobytes())


def _write_refused_metadata(corpus: _Corpus, base: Image.Image) -> None:
    """Metadata Pillow refuses: :data:`REFUSED_METADATA`."""
    bomb = zlib.compress(b"A" * (4 << 20), 9)  # 4 MiB of text: past PngImagePlugin.MAX_TEXT_CHUNK
    corpus.put("ztxt_bomb.png", _png_with(base, before_idat=[chunk(b"zTXt", b"Comment\x00\x00" + bomb)]))
    corpus.put("itxt_bomb.png", _png_with(base, before_idat=[chunk(b"iTXt", b"Comment\x00\x01\x00\x00\x00" + bomb)]))
    corpus.put("ztxt_bomb_after_idat.png", _png_with(base, after_idat=[chunk(b"zTXt", b"Comment\x00\x00" + bomb)]))
    iccp = chunk(b"iCCP", b"icc\x00\x01" + zlib.compress(b"\x00" * 128))  # compression method 1: unknown
    corpus.put("iccp_method1.png", _png_with(base, before_idat=[iccp]))


def _write_plain(corpus: _Corpus, base: Image.Image) -> None:
    """Plain awkwardness both decoders handle: text chunks, 16-bit and compressed TIFF, CMYK, animation."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "a harmless comment " * 20, zip=True)
    corpus.save("text_ok.png", base, pnginfo=info)
    arr16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    corpus.save("gray16.tif", Image.fromarray(arr16))
    corpus.save("deflate.tif", base, compression="tiff_adobe_deflate")
    corpus.save("lzw_tagged.tif", base, compression="tiff_lzw", tiffinfo={65000: "private tag", 33432: "copyright"})
    corpus.save("cmyk.jpg", base.convert("CMYK"), quality=90)
    corpus.save("palette.gif", base.convert("P", palette=Image.Palette.ADAPTIVE, colors=32))
    frames = [pattern(30 + k, (120, 80)) for k in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    corpus.put("animated.gif", buf.getvalue())
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=50, quality=80)
    corpus.put("animated.webp", buf.getvalue())
    corpus.save("lossless.webp", base, lossless=True)
    corpus.save("mono.bmp", base.convert("1"))
    corpus.save("pal8.bmp", base.convert("P", palette=Image.Palette.ADAPTIVE, colors=200))
    corpus.save("rgba32.bmp", base.convert("RGBA"))
    corpus.save("photo.bmp", base)


def _write_hand_made_bmps(corpus: _Corpus) -> None:
    """4-bit palette and 16-bit RGB555 bitmaps: Pillow reads them but does not write them."""
    w, h = 64, 48
    idx = (np.arange(w * h).reshape(h, w) // 7 % 16).astype(np.uint8)
    rows4 = b"".join((bytes((idx[y, 2 * x] << 4) | idx[y, 2 * x + 1] for x in range(w // 2))).ljust(32, b"\0")
                     for y in range(h))
    pal16 = b"".join(bytes((16 * k, 255 - 16 * k, (40 * k) % 256, 0)) for k in range(16))
    corpus.put("pal4.bmp", _bmp(w, h, 4, rows4, pal16))
    rgb555 = (np.arange(w * h, dtype=np.uint16).reshape(h, w) * 37) & 0x7FFF
    corpus.put("rgb555.bmp", _bmp(w, h, 16, rgb555.astype("<u2").tobytes()))


def _write_large_and_damaged(corpus: _Corpus, base: Image.Image) -> None:
    """Large and progressive JPEGs, and damaged ones that still decode."""
    # A large JPEG: where Pillow's draft mode used to decode at reduced size and DALI did not.
    corpus.save("large.jpg", pattern(22, (2400, 1600)), quality=90)
    corpus.save("large_420.jpg", pattern(23, (1800, 1350)), quality=85, subsampling=2)
    corpus.save("progressive.jpg", base, quality=85, progressive=True)
    # Damaged but decodable: libjpeg warns (on stderr, inside DALI) and Pillow warns (a Python warning).
    good = io.BytesIO()
    base.save(good, "JPEG", quality=90)
    damaged = bytearray(good.getvalue())
    for i in range(len(damaged) // 2, len(damaged) // 2 + 100):
        damaged[i] ^= 0x55
    corpus.put("corrupt_entropy.jpg", bytes(damaged))
    corpus.put("trailing_garbage.jpg", good.getvalue() + b"garbage" * 10)
    exif = _exif(1).tobytes()
    corpus.save("bad_exif.jpg", base, quality=90, exif=exif[:-4] + b"\xff\xff\x00\x10")
