"""Pillow and DALI agree on an awkward corpus: same status, same orientation, same pixels, quiet stderr.

The corpus (tests/_awkward.py) is written here, not downloaded: rotated PNGs
whose orientation is in an eXIf chunk, XMP or ImageMagick's raw EXIF text;
text-chunk bombs and an iCCP chunk with an unknown compression method; 16-bit
and compressed TIFF, CMYK JPEG, palette and animated GIF/WebP, odd BMP depths,
large JPEGs, damaged JPEGs that make libjpeg talk.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from dfscan.workers.images.decode import PillowDecoder, Preprocess, decode_one, open_image
from dfscan.workers.reading.errors import ImageError
from dfscan.workers.reading.reader import read_file
from tests._awkward import REFUSED_METADATA, ROTATED, write_awkward
from tests._images import jpeg_bytes, pattern, png_header_only, write_bad_files
from tests._models import tiny_onnx_model  # noqa: F401 - fixture

PRE = Preprocess()
LEVEL = 1.0 / (255.0 * 0.225)  # one grey level, in normalised units (the smallest std)
LARGE = ("large.jpg", "large_420.jpg")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return write_awkward(tmp_path_factory.mktemp("awkward"))


@pytest.fixture(scope="module")
def both(corpus):
    """Every corpus file decoded by Pillow and by DALI on the CPU: name -> (pillow, dali)."""
    pytest.importorskip("nvidia.dali")
    from dfscan.workers.images.dali import DaliDecoder

    files = [read_file(str(p)) for p in corpus.values()]
    pillow = PillowDecoder(PRE)
    dali = DaliDecoder(PRE, device="cpu")
    try:
        ref, ours = pillow.decode_batch(files), dali.decode_batch(files)
    finally:
        pillow.close()
        dali.close()
    return {name: (a, b) for name, a, b in zip(corpus, ref, ours)}, dali.stats


def _status(out) -> str:
    return out.code if isinstance(out, ImageError) else "ok"


def test_every_file_gets_the_same_status_from_both_decoders(both):
    results, _ = both
    assert len(results) >= 30
    for name, (ref, ours) in results.items():
        assert _status(ours) == _status(ref), (name, getattr(ref, "message", "ok"), getattr(ours, "message", "ok"))
    for name in REFUSED_METADATA:
        assert _status(results[name][0]) != "ok", name


def test_decoded_pixels_agree_large_jpegs_included(both):
    """Within about a grey level everywhere; large JPEGs are fully decoded by both (no draft mode)."""
    results, stats = both
    for name, (ref, ours) in results.items():
        if isinstance(ref, ImageError):
            continue
        diff = np.abs(ref - ours)
        if name in LARGE:
            # Before, with Pillow's draft mode: mean 0.39 / 1.09 levels, 99th percentile 3.0 / 10.8 levels
            # (large.jpg / large_420.jpg).  Now 0.012 / 0.017 and 0; a few border pixels still differ more.
            assert diff.mean() < 0.05 * LEVEL and np.percentile(diff, 99) < 1.0 * LEVEL, name
        else:
            assert diff.max() < 4.5 * LEVEL, (name, diff.max() / LEVEL)
    assert stats["dali"] >= 10  # DALI still decodes the plain files itself


def test_orientation_only_pillow_reads_is_applied_with_dali(both):
    """Files stored upside down with "rotate 180" in PNG eXIf / XMP / raw EXIF text, JPEG XMP, WebP EXIF."""
    results, stats = both
    upright = decode_one(_png_bytes(pattern(21, (240, 160))), PRE)
    flipped = decode_one(_png_bytes(pattern(21, (240, 160)).rotate(180)), PRE)
    for name in ROTATED:
        ref, ours = results[name]
        assert np.abs(ref - upright).mean() * 5 < np.abs(ref - flipped).mean(), name  # Pillow: upright
        assert np.abs(ours - ref).mean() < 0.5 * LEVEL, name  # the DALI decoder: the same upright image
        assert np.abs(ours - flipped).mean() > 10 * LEVEL, name  # not the stored, upside-down one
    assert stats["orientation"] >= 4


def _png_bytes(im) -> bytes:
    import io

    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_pixel_limit_follows_max_pixels_above_pillows_default_without_warnings():
    before = list(warnings.filters)
    big = png_header_only(14_000, 13_000)  # 182 Mpx: Image.open raises DecompressionBombError on it
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        im = open_image(big, max_pixels=200_000_000)  # header only: nothing decoded
        assert im.size == (14_000, 13_000)
        with pytest.raises(ImageError) as info:
            open_image(big, max_pixels=100_000_000)
    assert info.value.code == "too-many-pixels" and "100000000" in info.value.message
    assert not [w for w in seen if "DecompressionBomb" in w.category.__name__]
    assert warnings.filters == before


def test_pixel_limit_is_the_same_in_both_decoders():
    pytest.importorskip("nvidia.dali")
    from dfscan.workers.images.dali import DaliDecoder

    small = Preprocess(max_pixels=150 * 150)
    files = [_raw("a.jpg", jpeg_bytes(1, (160, 160))), _raw("b.png", _png_bytes(pattern(2, (160, 150)))),
             _raw("c.jpg", jpeg_bytes(3, (140, 140))), _raw("d.gif", _gif(pattern(4, (200, 120))))]
    pillow, dali = PillowDecoder(small), DaliDecoder(small, device="cpu")
    try:
        codes = [[_status(o) for o in d.decode_batch(files)] for d in (pillow, dali)]
    finally:
        pillow.close()
        dali.close()
    assert codes[0] == codes[1] == ["too-many-pixels", "too-many-pixels", "ok", "too-many-pixels"]


def _gif(im) -> bytes:
    import io

    buf = io.BytesIO()
    im.convert("P").save(buf, "GIF")
    return buf.getvalue()


def _raw(name: str, data: bytes):
    from dfscan.workers.reading.reader import FileData

    return FileData(name, len(data), 0.0, data)


def test_pixel_limit_is_thread_safe_and_leaves_the_warnings_filter_alone(tmp_path):
    """Bombs between Pillow's warning and error thresholds, truncated files and photos, in 8 threads at once."""
    bad = write_bad_files(tmp_path)
    kinds = [(png_header_only(10_000, 10_000), "too-many-pixels"),  # 100 Mpx: Pillow only *warned* about these
             (bad["truncated"][0].read_bytes(), "truncated"),
             (jpeg_bytes(5, (64, 64)), "ok")]
    files = [_raw(f"f{i}", kinds[i % 3][0]) for i in range(90)]
    expected = [kinds[i % 3][1] for i in range(90)]
    before = list(warnings.filters)
    decoder = PillowDecoder(Preprocess(max_pixels=50_000_000), threads=8)
    errors: list[str] = []

    def run() -> None:
        for _ in range(3):
            got = [_status(o) for o in decoder.decode_batch(files)]
            if got != expected:
                errors.append(str([(e, g) for e, g in zip(expected, got) if e != g][:3]))

    # Watch the process-global filter list while decoding: it must never be swapped or edited
    # (the old decoder switched it on and off around every open, from every decode thread).
    original = warnings.filters
    touched: list[bool] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if warnings.filters is not original or warnings.filters != before:
                touched.append(True)
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        threads = [threading.Thread(target=run) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        done.set()
        watcher.join()
        decoder.close()
    assert not errors
    assert not touched, "the decoder changed the global warnings filter while decoding"
    assert warnings.filters == before


def test_scan_of_the_awkward_corpus_writes_nothing_else_to_stderr(tmp_path, corpus, tiny_onnx_model):
    """`dfscan scan --json` with either decoder: one row per file, the same statuses, an empty stderr."""
    pytest.importorskip("nvidia.dali")
    root = next(iter(corpus.values())).parent
    statuses = {}
    for decoder in ("pillow", "dali-cpu"):
        db_path = tmp_path / f"{decoder}.db"
        done = subprocess.run(
            [sys.executable, "-m", "dfscan.cli", "scan", str(root), "--model", str(tiny_onnx_model),
             "--db", f"sqlite:///{db_path}", "--decoder", decoder, "--json", "--no-progress"],
            capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == "", f"{decoder}: {len(done.stderr.splitlines())} lines on stderr:\n{done.stderr[:2000]}"
        assert json.loads(done.stdout)["total"] == len(corpus)
        with sqlite3.connect(db_path) as con:
            statuses[decoder] = dict(con.execute("SELECT path, coalesce(error_code, status) FROM results"))
    assert len(statuses["pillow"]) == len(corpus)
    assert statuses["pillow"] == statuses["dali-cpu"]


def test_text_mode_prints_one_summary_line_for_the_chatter(tmp_path, corpus, tiny_onnx_model):
    pytest.importorskip("nvidia.dali")
    root = next(iter(corpus.values())).parent
    done = subprocess.run(
        [sys.executable, "-m", "dfscan.cli", "scan", str(root), "--model", str(tiny_onnx_model),
         "--db", f"sqlite:///{tmp_path / 'x.db'}", "--decoder", "dali-cpu", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "went to the log" in lines[0], done.stderr
