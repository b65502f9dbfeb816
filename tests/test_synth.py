"""The sample-archive generator: layout, determinism, JPEG on both classes, and real up-sampling traces."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dfscan.detector.data import find_splits
from dfscan.detector.synth import NOTICE, SynthError, _procedural, simulate_fake, synthesize
from dfscan.cli import main


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))


def test_140k_layout_pairs_and_counts(tmp_path):
    s = synthesize(tmp_path / "a", 40, size=64, seed=3)
    assert s.total == 40
    assert set(s.counts) == {"train", "valid", "test"}
    assert sum(c["real"] for c in s.counts.values()) == sum(c["fake"] for c in s.counts.values()) == 20
    assert s.counts["train"]["real"] == 14 and s.counts["valid"]["real"] == 3 and s.counts["test"]["real"] == 3
    # Each fake sits in the same split as the real image it was made from: content can't leak across splits.
    for split in ("train", "valid", "test"):
        reals = {p.stem for p in (tmp_path / "a" / split / "real").glob("*.jpg")}
        fakes = {p.stem.split("_")[0] for p in (tmp_path / "a" / split / "fake").glob("*.jpg")}
        assert reals == fakes
    splits = find_splits(tmp_path / "a")
    assert splits.layout == "140k" and len(splits.train) == 28 and len(splits.test) == 6
    manifest = json.loads((tmp_path / "a" / "synth.json").read_text())
    assert manifest["notice"] == NOTICE and "NOT a deepfake data set" in manifest["notice"]
    assert "NOT a deepfake data set" in (tmp_path / "a" / "README.txt").read_text()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    synthesize(tmp_path / "a", 12, size=64, seed=1, layout="flat")
    synthesize(tmp_path / "b", 12, size=64, seed=1, layout="flat")
    synthesize(tmp_path / "c", 12, size=64, seed=2, layout="flat")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    for rel in _files(tmp_path / "a"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    first = "real/000000.jpg"
    assert (tmp_path / "c" / first).read_bytes() != (tmp_path / "a" / first).read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["README.txt", "fake", "real", "synth.json"]


def test_both_classes_are_jpeg_at_varied_qualities(tmp_path):
    synthesize(tmp_path / "a", 30, size=64, seed=0, layout="flat", quality=(40, 95))
    for label in ("real", "fake"):
        tables = set()
        for p in (tmp_path / "a" / label).glob("*.jpg"):
            with Image.open(p) as im:
                assert im.format == "JPEG" and im.size == (64, 64) and im.mode == "RGB"
                tables.add(tuple(im.quantization[0][:8]))
        assert len(tables) > 3, f"{label}: JPEG quality does not vary"


def _phase_ratio(arr: np.ndarray) -> float:
    """Mean |difference| of pixel pairs that straddle an even/odd boundary vs those inside one, the larger over the smaller."""
    g = arr.astype(np.float64).mean(axis=2)
    d = np.abs(np.diff(g, axis=1))
    a, b = d[:, 0::2].mean(), d[:, 1::2].mean()
    return max(a, b) / min(a, b)


def _checkerboard_energy(arr: np.ndarray) -> float:
    """Share of the spectrum's energy (DC removed) at the Nyquist frequencies where up-sampling leaves its peaks."""
    g = arr.astype(np.float64).mean(axis=2)
    f = np.abs(np.fft.fft2(g - g.mean())) ** 2
    n = g.shape[0] // 2
    return float((f[n, n] + f[0, n] + f[n, 0]) / f.sum())


def test_fakes_carry_periodic_upsampling_traces():
    """Before JPEG: nearest-neighbour fakes show the pair structure, transposed-conv fakes the Nyquist peaks."""
    ratios, energies = {"real": [], "nearest_smooth": []}, {"real": [], "transposed_conv": []}
    for i in range(12):
        rng = np.random.default_rng(i)
        real = _procedural(rng, 128)
        ratios["real"].append(_phase_ratio(real))
        energies["real"].append(_checkerboard_energy(real))
        ratios["nearest_smooth"].append(_phase_ratio(simulate_fake(rng, real, "nearest_smooth")[0]))
        energies["transposed_conv"].append(_checkerboard_energy(simulate_fake(rng, real, "transposed_conv")[0]))
    assert min(ratios["nearest_smooth"]) > max(ratios["real"])
    assert np.median(energies["transposed_conv"]) > 20 * np.median(energies["real"])


def test_fake_keeps_the_picture():
    rng = np.random.default_rng(0)
    real = _procedural(rng, 96)
    fake, method = simulate_fake(rng, real)
    assert fake.shape == real.shape and fake.dtype == np.uint8
    # Same picture: small mean difference, but not identical.
    diff = np.abs(fake.astype(float) - real.astype(float)).mean()
    assert 0.5 < diff < 20, (method, diff)


def test_packaged_photographs_source(tmp_path):
    pytest.importorskip("sklearn")
    s = synthesize(tmp_path / "p", 8, size=64, seed=0, layout="flat", source="packages")
    assert s.total == 8 and s.source == "packages"


@pytest.mark.parametrize(
    "kwargs,match",
    [({"n": 7}, "even"), ({"n": 8, "layout": "nope"}, "known layouts"), ({"n": 8, "source": "web"}, "known sources"),
     ({"n": 8, "size": 31}, "size"), ({"n": 8, "quality": (90, 10)}, "quality")],
)
def test_bad_arguments_raise(tmp_path, kwargs, match):
    n = kwargs.pop("n")
    with pytest.raises(SynthError, match=match):
        synthesize(tmp_path / "x", n, **kwargs)


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(SynthError, match="not empty"):
        synthesize(tmp_path / "x", 4)


def test_cli(tmp_path):
    result = CliRunner().invoke(main, ["synth", str(tmp_path / "s"), "--n", "10", "--size", "48", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["total"] == 10
    bad = CliRunner().invoke(main, ["synth", str(tmp_path / "s"), "--n", "10"])
    assert bad.exit_code != 0 and "not empty" in bad.output and "Traceback" not in bad.output
    with Image.open(io.BytesIO(next((tmp_path / "s").rglob("*.jpg")).read_bytes())) as im:
        assert im.size == (48, 48)
