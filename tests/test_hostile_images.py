"""Memory under hostile images: decoding is bounded by bytes as well as by pixels.

A 9459x9459 16-bit grey PNG (a gradient, about 1 MB on disk) passes the pixel
limit.  Rescaled to 8 bits through whole-image float64 arrays, it took a scan
to 2.45 GB peak RSS (the Kubernetes limit of ``serve`` is 4 Gi); rescaled a
strip of rows at a time, each conversion freeing its source, 0.62 GB.  An
image whose decoding would take more than ``max_decode_bytes`` is an error row
with its own code, ``too-large-decoded``, refused before its pixels are
decoded; and the face stage, which holds the full-resolution images of a
sub-batch at once, cuts its sub-batches by those bytes too.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dfscan.cli import main
from tests._cluster import DFSCAN, free_port, wait_for
from dfscan.workers.images.decode import Preprocess, decode_one, open_image
from dfscan.workers.reading.errors import REASONS, ImageError
from tests._images import jpeg_bytes, png_header_only, write_jpegs
from tests._models import tiny_onnx_model  # noqa: F401 - fixture

SIDE = 9459  # 89,472,681 pixels: just under the default limit of 89,478,485
PNG_RSS_LIMIT_KB = 1_200_000  # measured: 2.45 GB before, 0.62 GB after

# Runs the scan as a child of a fresh interpreter, so RUSAGE_CHILDREN is that scan's peak alone.
_MEASURE = """
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": done.returncode, "stderr": done.stderr[-2000:],
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


@pytest.fixture(scope="module")
def grey16_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 9459x9459 16-bit grey gradient, saved as a PNG of mode I;16."""
    x = np.arange(SIDE, dtype=np.uint32)
    pixels = ((x[None, :] * 7 + x[:, None] * 3) % 65536).astype(np.uint16)
    im = Image.fromarray(pixels)
    assert im.mode == "I;16"
    path = tmp_path_factory.mktemp("grey16") / "root" / "grey16.png"
    path.parent.mkdir()
    im.save(path, compress_level=6)
    return path


def _scan_peak(root: Path, model: Path, db: Path, *extra: str) -> dict:
    scan = [sys.executable, "-m", "dfscan.cli", "scan", str(root), "--model", str(model), "--db", f"sqlite:///{db}",
            "--decoder", "pillow", "--runtime", "onnxruntime", "--json", "--no-progress", *extra]
    measured = subprocess.run([sys.executable, "-c", _MEASURE, *scan], capture_output=True, text=True, timeout=600)
    return json.loads(measured.stdout.strip().splitlines()[-1])


def _rows(db: Path) -> dict[str, tuple]:
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT path, status, error_code, error FROM results").fetchall()
    return {Path(p).name: (status, code, why) for p, status, code, why in rows}


def test_a_16_bit_png_at_the_pixel_limit_scans_within_bounded_memory(grey16_png, tiny_onnx_model, tmp_path):
    """The PNG is scored (its verdict as before: the rescaling gives the same bytes) in a fraction of the memory."""
    assert len(grey16_png.read_bytes()) < 2_000_000
    report = _scan_peak(grey16_png.parent, tiny_onnx_model, tmp_path / "scan.db")
    assert report["rc"] == 0, report["stderr"]
    assert _rows(tmp_path / "scan.db") == {"grey16.png": ("ok", None, None)}
    print(f"peak RSS of dfscan scan on a {SIDE}x{SIDE} 16-bit PNG: {report['maxrss_kb'] / 1e6:.2f} GB")
    assert report["maxrss_kb"] < PNG_RSS_LIMIT_KB, f"peak RSS {report['maxrss_kb']} kB"


def test_decoded_bytes_follow_the_mode_and_the_budget_refuses_from_the_header():
    """What decoding holds at its peak, per mode; over the budget, the header is all that is read."""
    from dfscan.workers.images.decode import decoded_bytes

    grey16 = Image.new("I;16", (100, 50))
    assert decoded_bytes(grey16) == 5 * 5000  # 2 (I;16) + 1 (its 8-bit rescaling), then 1 + 4 (RGB)
    assert decoded_bytes(Image.new("RGB", (100, 50))) == 4 * 5000  # Pillow holds RGB in 4 bytes a pixel
    assert decoded_bytes(Image.new("RGB", (100, 50)), transposed=True) == 8 * 5000
    assert decoded_bytes(Image.new("L", (100, 50))) == 5 * 5000
    assert "too-large-decoded" in REASONS
    # 8000x8000 RGB declared, no pixels behind it: refused on its header (256 MB > 100 MiB), not decoded.
    bomb = png_header_only(8000, 8000)
    with pytest.raises(ImageError) as refused:
        decode_one(bomb, Preprocess(max_decode_bytes=100 << 20))
    assert refused.value.code == "too-large-decoded"
    assert "256000000 bytes" in refused.value.message and "104857600-byte budget" in refused.value.message
    # The same header under a budget it fits: decoding is tried (and fails on the missing pixels).
    with pytest.raises(ImageError) as tried:
        decode_one(bomb, Preprocess(max_decode_bytes=1 << 30))
    assert tried.value.code != "too-large-decoded"
    # open_image alone (the DALI decoder's first step) refuses it the same way.
    with pytest.raises(ImageError, match="budget"):
        open_image(bomb, 89_478_485, max_bytes=100 << 20)


@pytest.mark.parametrize("faces", ["off", "on"])
def test_a_scan_refuses_an_image_over_the_byte_budget_with_its_own_code(tiny_onnx_model, sqlite_url, tmp_path, faces):
    """DFSCAN_MAX_DECODE_BYTES: a 5000x4000 JPEG (80 MB decoded) over a 64 MiB budget is an error row; the rest
    is scored."""
    root = tmp_path / "imgs"
    small = write_jpegs(root, 2)
    (root / "large.jpg").write_bytes(jpeg_bytes(3, (5000, 4000)))
    result = CliRunner().invoke(main, ["scan", str(root), "--model", str(tiny_onnx_model), "--db", sqlite_url,
                                       "--decoder", "pillow", "--faces", faces, "--json"],
                                env={"DFSCAN_MAX_DECODE_BYTES": str(64 << 20)}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["total"] == 3 and summary["errors_by_reason"] == {"too-large-decoded": 1}, summary
    db = Path(sqlite_url.removeprefix("sqlite:///"))
    rows = _rows(db)
    status, code, why = rows["large.jpg"]
    assert (status, code) == ("error", "too-large-decoded") and "5000x4000" in why, why
    assert all(rows[p.name][0] in ("ok", "no-face") for p in small)


@pytest.mark.timeout(180)
def test_v1_score_refuses_an_upload_over_the_byte_budget_with_its_own_code(tiny_onnx_model, sqlite_url, tmp_path):
    """The service decodes uploads with the scan's decoder and budget: the same row fields, the same code."""
    key = CliRunner().invoke(main, ["api-key", "create", "--name", "budget", "--db", sqlite_url, "--json"],
                             catch_exceptions=False)
    assert key.exit_code == 0, key.output
    token = json.loads(key.stdout)["token"]
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "DFSCAN_THREADS": "1", "DFSCAN_MAX_DECODE_BYTES": str(64 << 20)}
    proc = subprocess.Popen([DFSCAN, "serve", "--model", str(tiny_onnx_model), "--db", sqlite_url, "--port", str(port),
                             "--runtime", "onnxruntime", "--decoder", "pillow"],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 60, "the server to be ready")
        files = [("files", ("large.jpg", jpeg_bytes(3, (5000, 4000)), "image/jpeg")),
                 ("files", ("small.jpg", jpeg_bytes(4), "image/jpeg"))]
        r = httpx.post(url + "/v1/score", files=files, headers={"Authorization": f"Bearer {token}"}, timeout=120)
        assert r.status_code == 200, r.text
        got = {x["name"]: x for x in r.json()["results"]}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert (got["large.jpg"]["status"], got["large.jpg"]["error_code"]) == ("error", "too-large-decoded"), got
    assert "5000x4000" in got["large.jpg"]["error"]
    assert got["small.jpg"]["status"] == "ok", got


# Decodes sixteen 3000x3000 JPEGs (36 MB each as Pillow holds RGB) through the face decoder in a fresh
# interpreter; prints how far its peak RSS rose above its RSS once the detector was loaded and warm
# (Linux: writing 5 to clear_refs resets the peak, VmHWM, to the present RSS).
_FACES = """
import json, sys
from dfscan.workers.images.decode import PillowDecoder, Preprocess
from dfscan.workers.faces import FaceOptions, create_face_detector
from dfscan.workers.scoring.face_stage import FaceDecoder
from dfscan.workers.reading.reader import read_file

def kb(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))

pre = Preprocess(max_decode_bytes=int(sys.argv[1]))
decoder = FaceDecoder(PillowDecoder(pre), pre, FaceOptions(), create_face_detector("mtcnn", "cpu"), threads=2)
files = [read_file(p) for p in sys.argv[2:]]
decoder.decode_batch(files[:1])
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
before = kb("VmRSS")
out = decoder.decode_batch(files)
print(json.dumps({"growth_kb": kb("VmHWM") - before, "kinds": sorted({type(o).__name__ for o in out})}))
"""


def test_the_face_stage_holds_no_more_decoded_images_than_the_budget(tmp_path):
    """Sixteen full-resolution images were held at once (peak RSS 852 MB above the warm decoder's RSS); now
    a sub-batch holds what fits the budget (150 MB: four of them), 240 MB above it in all."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(16):
        p = tmp_path / f"{i:02d}.jpg"
        Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).resize((3000, 3000)).save(p, quality=85)
        paths.append(str(p))
    done = subprocess.run([sys.executable, "-c", _FACES, str(150_000_000), *paths], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["kinds"] == ["FaceCrops"]  # every image decoded and looked at (no face in noise: no crops)
    print(f"face decoder, 16 x 3000x3000, 150 MB budget: peak RSS rose {report['growth_kb'] / 1e3:.0f} MB")
    assert report["growth_kb"] < 450_000, report
