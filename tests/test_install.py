"""A plain ``pip install`` of dfscan scans faces; where the face detector can't be imported, one line says why.

The MTCNN face detector is facenet-pytorch, a regular dependency pinned to 2.5.3: its metadata asks for
numpy, requests, torchvision and pillow with no versions, where 2.6.0's pins torch<2.3, numpy<2 and
Pillow<10.3 (which once made the Makefile install it with --no-deps, so `pip install .` alone gave a
traceback on `--faces on`). 2.5.3 ships the same MTCNN code and P/R/O-net weights, byte for byte.

The slow test is the real thing: a fresh venv, ``pip install`` of a copy of this repository (not
editable; pip reaches what this machine's pip configuration gives it: the local wheel folders and
PyPI), then that venv's ``dfscan scan --faces on`` on a photograph with a face. About 2 minutes here
on 2 shared cores, most of it pip unpacking ~7 GB (mostly torch's CUDA libraries): the venv and the
install start in the background when the session starts (tests/_install.py, started by conftest.py),
pip runs with ``--no-compile`` (byte-compiling all of that took ~25 s; Python compiles what it imports),
and the venv is deleted by a detached ``rm -rf`` after the test (another ~30 s).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from dfscan.cli import main
from tests._install import ROOT, clean_env, fresh_install
from tests._models import tiny_onnx_model  # noqa: F401 - fixture

FACENET = "facenet-pytorch==2.5.3"

# sha256 of facenet-pytorch 2.6.0's MTCNN code and weights (the wheel the Makefile used to install
# with --no-deps); 2.5.3's wheel holds the same bytes.
FACENET_260_SHA256 = {
    "data/onet.pt": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
    "data/pnet.pt": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "data/rnet.pt": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "models/mtcnn.py": "29a965963337313068ab335cbc48f4a4facc2e5857756ef7b9ab11e5c1d6b620",
    "models/utils/detect_face.py": "7f6244c8118b9a19d0b6620e6dcb90625cced5b1eceed58d0d69303b5ccbab06",
}
# MTCNN(keep_all=True).detect on skimage's astronaut (a lossless PNG), facenet-pytorch 2.6.0, torch 2.14.1, CPU.
ASTRONAUT_BOX_260 = (181.0514, 62.1561, 267.7473, 172.0502)
ASTRONAUT_FACE = (181.0, 62.0, 268.0, 172.0)  # tests/test_faces.py's, measured by eye and MTCNN


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def one_error_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert "Traceback" not in output, output
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    return lines[0]


def test_facenet_is_a_plain_dependency() -> None:
    """pyproject.toml names it; the Makefile installs nothing beside the package; the message names the same pin."""
    from dfscan.workers.faces.detectors import MtcnnDetector

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert FACENET in project["dependencies"]
    assert MtcnnDetector.REQUIREMENT == FACENET
    assert "--no-deps" not in (ROOT / "Makefile").read_text()


def test_scan_without_the_detector_ends_in_one_line(monkeypatch, tiny_onnx_model, tmp_path: Path) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(skimage_data.astronaut()).save(photo)
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # `import facenet_pytorch` fails, as if not installed
    db_path = tmp_path / "faces.db"
    res = CliRunner().invoke(main, ["scan", str(photo), "--faces", "on", "--model", str(tiny_onnx_model),
                                    "--db", f"sqlite:///{db_path}"])
    assert res.exit_code == 1, res.output
    assert not isinstance(res.exception, ImportError)
    line = one_error_line(res.output)
    assert f"pip install '{FACENET}'" in line and "--faces off" in line


def _run(args: list, cwd: Path, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([str(a) for a in args], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                         timeout=timeout)
    if check and res.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {res.returncode}:\n{(res.stdout + res.stderr)[-4000:]}")
    return res


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_plain_pip_install_scans_faces(tiny_onnx_model, tmp_path: Path) -> None:
    skimage_data = pytest.importorskip("skimage.data")  # (a skip leaves a started install to atexit's discard)
    # `python -m venv` and `pip install --no-compile` of a copy of this repository: started when the session
    # started, beside the tests before this one (tests/_install.py), or now when this test runs alone.
    install = fresh_install()
    photo = tmp_path / "photos" / "astronaut.png"  # lossless: the detector sees skimage's exact pixels
    photo.parent.mkdir()
    Image.fromarray(skimage_data.astronaut()).save(photo)
    venv = install.venv
    bin_ = venv / "bin"
    try:
        status, seconds, output = install.wait(1500)
        if status != 0:
            pytest.fail(f"venv + pip install of {install.source} exited {status}:\n{output[-4000:]}")
        print(f"\nfresh venv + pip install of dfscan: {seconds:.0f} s since it started")

        _run([bin_ / "python", "-m", "pip", "check"], tmp_path, 300)
        probe = _run([bin_ / "python", "-I", "-c", PROBE, photo], tmp_path, 300).stdout.splitlines()
        facts = dict(line.split("=", 1) for line in probe)
        assert facts["facenet"] == FACENET.split("==")[1]
        assert facts["dfscan"].startswith(str(venv)), facts  # the installed copy, not this checkout
        for name, digest in FACENET_260_SHA256.items():
            assert facts[name] == digest, name
        box = [float(v) for v in facts["box"].split(",")]
        assert max(abs(a - b) for a, b in zip(box, ASTRONAUT_BOX_260)) < 0.05, box  # 2.6.0's box
        assert float(facts["prob"]) > 0.99

        db_path = tmp_path / "faces.db"
        scan = _run([bin_ / "dfscan", "scan", photo.parent, "--faces", "on", "--model", tiny_onnx_model,
                     "--db", f"sqlite:///{db_path}"], tmp_path, 600)
        assert "Traceback" not in scan.stdout + scan.stderr
        with sqlite3.connect(db_path) as conn:
            rows = conn.execute("SELECT path, status, faces, faces_found, p_fake FROM scan_results").fetchall()
            boxes = conn.execute("SELECT x, y, w, h, detector_score FROM scan_faces").fetchall()
        assert len(rows) == 1, rows
        path, status, faces, found, p_fake = rows[0]
        assert Path(path).name == photo.name and status == "ok" and faces == found == 1 and 0 <= p_fake <= 1
        ((x, y, w, h, score),) = boxes
        assert iou((x, y, x + w, y + h), ASTRONAUT_FACE) >= 0.5 and score > 0.99

        # Without the detector: one line naming what to install, a non-zero exit, no traceback, no scan.
        _run([bin_ / "python", "-m", "pip", "uninstall", "--quiet", "--yes", "facenet-pytorch"], tmp_path, 300)
        db_path2 = tmp_path / "no-detector.db"
        res = _run([bin_ / "dfscan", "scan", photo.parent, "--faces", "on", "--model", tiny_onnx_model,
                    "--db", f"sqlite:///{db_path2}"], tmp_path, 600, check=False)
        assert res.returncode == 1, res.stdout + res.stderr
        assert f"pip install '{FACENET}'" in one_error_line(res.stdout + res.stderr)
    finally:
        install.discard()  # ~7 GB: ~30 s of unlinking, by a detached `rm -rf` beside the next tests


# Run by the fresh venv's Python: what it installed, and the detector's box on the photograph.
PROBE = """
import hashlib, importlib.metadata as md, sys
from pathlib import Path
import numpy as np
from PIL import Image
import dfscan, facenet_pytorch
from facenet_pytorch import MTCNN
print("facenet=" + md.version("facenet-pytorch"))
print("dfscan=" + dfscan.__file__)
root = Path(facenet_pytorch.__file__).parent
for name in ("data/onet.pt", "data/pnet.pt", "data/rnet.pt", "models/mtcnn.py", "models/utils/detect_face.py"):
    print(name + "=" + hashlib.sha256((root / name).read_bytes()).hexdigest())
boxes, probs = MTCNN(keep_all=True, device="cpu").detect(Image.open(sys.argv[1]).convert("RGB"))
assert boxes is not None and len(boxes) == 1, boxes
print("box=" + ",".join(f"{v:.4f}" for v in np.asarray(boxes[0], dtype=float)))
print("prob=" + str(float(probs[0])))
"""
