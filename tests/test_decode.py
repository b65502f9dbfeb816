"""The Pillow decoder and the reader on real files: every mode to RGB, every bad input to a reason."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from tests._images import jpeg_bytes, pattern, write_bad_files, write_mode_zoo
from dfscan.workers.images.decode import PillowDecoder, Preprocess, decode_one, load_rgb, to_rgb
from dfscan.workers.reading.errors import ImageError
from dfscan.workers.reading.reader import read_file

PRE = Preprocess()


def test_every_mode_decodes_to_normalised_chw(tmp_path):
    zoo = write_mode_zoo(tmp_path)
    for name, path in zoo.items():
        t = decode_one(path.read_bytes(), PRE)
        assert t.shape == (3, 224, 224), name
        assert t.dtype == np.float32, name
        assert np.isfinite(t).all(), name
        assert -2.2 < t.min() and t.max() < 2.7, name  # within ImageNet-normalised range


def test_sixteen_bit_is_rescaled_not_saturated(tmp_path):
    zoo = write_mode_zoo(tmp_path)
    im = to_rgb(Image.open(zoo["gray16.png"]))
    ref = pattern(7).convert("L")
    diff = np.abs(np.asarray(im.convert("L"), dtype=int) - np.asarray(ref, dtype=int))
    assert diff.max() <= 1  # Pillow's plain convert would clip nearly everything to 255


def test_exif_orientation_is_applied(tmp_path):
    zoo = write_mode_zoo(tmp_path)
    im = load_rgb(zoo["rotated.jpg"].read_bytes())
    assert im.size == (200, 320)  # stored 320x200, orientation 6 turns it upright


def test_normalisation_matches_torchvision_formula():
    im = pattern(1, (224, 224))
    data = np.asarray(im, dtype=np.float32) / 255.0
    mean = np.array(PRE.mean, dtype=np.float32)
    std = np.array(PRE.std, dtype=np.float32)
    expected = ((data - mean) / std).transpose(2, 0, 1)
    import io

    buf = io.BytesIO()
    im.save(buf, format="PNG")
    got = decode_one(buf.getvalue(), PRE)
    assert np.abs(got - expected).max() < 1e-5


def test_large_jpeg_uses_draft_mode_and_still_gives_224():
    data = jpeg_bytes(2, (2000, 1500))
    im = load_rgb(data, size=(224, 224))
    assert 224 <= im.size[1] < 1500 and 224 <= im.size[0] < 2000  # decoded at a reduced scale
    assert decode_one(data, PRE).shape == (3, 224, 224)


@pytest.mark.parametrize("kind", ["truncated", "not-image", "bomb"])
def test_bad_bytes_raise_image_error_with_reason(tmp_path, kind):
    path, code = write_bad_files(tmp_path)[kind]
    with pytest.raises(ImageError) as info:
        decode_one(path.read_bytes(), PRE)
    assert info.value.code == code
    assert info.value.message


def test_pixel_limit_is_checked_from_the_header():
    data = jpeg_bytes(0, (400, 300))
    with pytest.raises(ImageError, match="exceeds the limit of 100000") as info:
        decode_one(data, Preprocess(max_pixels=100_000))
    assert info.value.code == "too-many-pixels"


def test_reader_reasons(tmp_path):
    bad = write_bad_files(tmp_path)
    with pytest.raises(ImageError) as info:
        read_file(str(bad["empty"][0]))
    assert info.value.code == "empty"
    with pytest.raises(ImageError) as info:
        read_file(str(tmp_path / "vanished.jpg"))
    assert info.value.code == "missing"
    os.mkfifo(tmp_path / "fifo.jpg")
    with pytest.raises(ImageError) as info:
        read_file(str(tmp_path / "fifo.jpg"))  # must not block waiting for a writer
    assert info.value.code == "not-regular"
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(ImageError) as info:
        read_file(str(tmp_path / "dir.jpg"))
    assert info.value.code == "not-regular"
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * 2048)
    with pytest.raises(ImageError) as info:
        read_file(str(big), max_bytes=1024)
    assert info.value.code == "too-large"


def test_reader_permission_denied(tmp_path):
    """A file the process may not read ends as 'unreadable'.

    Root reads anything, so as root the check runs in a child process whose
    capabilities to override file permissions are dropped (util-linux setpriv).
    """
    import json
    import shutil
    import subprocess
    import sys

    p = tmp_path / "locked.jpg"
    p.write_bytes(jpeg_bytes())
    p.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(ImageError) as info:
            read_file(str(p))
        assert info.value.code == "unreadable"
        return
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv (util-linux) is missing: can't make a file unreadable")
    code = (
        "import json, sys\n"
        "from dfscan.workers.reading.errors import ImageError\n"
        "from dfscan.workers.reading.reader import read_file\n"
        "try:\n    read_file(sys.argv[1]); print(json.dumps(None))\n"
        "except ImageError as e:\n    print(json.dumps([e.code, e.message]))\n"
    )
    done = subprocess.run([setpriv, "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", code, str(p)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["unreadable", "permission denied"]


def test_decoder_batch_keeps_order_and_isolates_failures(tmp_path):
    from dfscan.workers.reading.reader import FileData

    good = [FileData(f"/g{i}", 1, 0.0, jpeg_bytes(i)) for i in range(5)]
    bad = FileData("/bad", 1, 0.0, b"garbage bytes")
    dec = PillowDecoder(PRE, threads=2)
    try:
        out = dec.decode_batch(good[:2] + [bad] + good[2:])
    finally:
        dec.close()
    assert [isinstance(o, ImageError) for o in out] == [False, False, True, False, False, False]
    assert np.allclose(out[0], decode_one(good[0].data, PRE))


def test_the_image_stage_sniffs_each_header_once(tmp_path, monkeypatch):
    """The stage's refusal and the decoder's own check share one sniff of a file's header (FileData.header)."""
    import dfscan.workers.images.decode as decode
    import dfscan.workers.reading.reader as reader
    from dfscan.workers.scoring import Stages
    from dfscan.workers.scoring.images import ImageStage

    calls: list[int] = []
    real = reader.sniff

    def counting(data: bytes):
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(reader, "sniff", counting)
    monkeypatch.setattr(decode, "sniff", counting)
    paths = []
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(jpeg_bytes(i))
        paths.append(str(tmp_path / f"{i}.jpg"))
    stages = Stages([ImageStage(PillowDecoder(Preprocess(size=(32, 32))), read_threads=2)])
    try:
        items = stages.prepare(paths).items
    finally:
        stages.close()
    assert all(it.payload is not None for it in items)
    assert len(calls) == 3
