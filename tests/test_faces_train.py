"""`dfscan train --faces on`: a model trained on face crops scores better with faces on than off.

The data set is synthetic but its faces are real (scikit-image's astronaut,
pasted at random places and sizes on real photographs): the fakes differ only
inside the face, by a fine checkerboard that a whole image resized to the
model's input averages away and a face crop keeps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dfscan.cli import main

skimage_data = pytest.importorskip("skimage.data")

SIZE = 448
PATCH_BOX = (150, 30, 300, 200)  # the astronaut's face with some head around it


def _checker(shape: tuple[int, int, int], amplitude: float) -> np.ndarray:
    yy, xx = np.indices(shape[:2])
    return (((yy + xx) % 2) * 2 - 1)[..., None] * amplitude


def write_archive(root: Path, per_class: int, seed: int) -> None:
    """``root/real`` and ``root/fake``: photos with one pasted face each; fakes carry the trace on the face only."""
    rng = np.random.default_rng(seed)
    face = Image.fromarray(skimage_data.astronaut()).crop(PATCH_BOX)
    backgrounds = [skimage_data.coffee(), skimage_data.chelsea(), skimage_data.rocket(), skimage_data.coins()]
    for label in ("real", "fake"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            bg = backgrounds[rng.integers(len(backgrounds))]
            if bg.ndim == 2:
                bg = np.stack([bg] * 3, axis=-1)
            im = Image.fromarray(bg).resize((SIZE, SIZE))
            scale = rng.uniform(0.55, 0.75)
            patch = np.asarray(face.resize((round(150 * scale), round(170 * scale))), dtype=np.float32)
            patch = patch * rng.uniform(0.85, 1.1)  # lighting
            if label == "fake":
                patch = patch + _checker(patch.shape, 28.0)
            patch_im = Image.fromarray(np.clip(patch, 0, 255).astype(np.uint8))
            x = int(rng.integers(0, SIZE - patch_im.width))
            y = int(rng.integers(0, SIZE - patch_im.height))
            im.paste(patch_im, (x, y))
            im.save(root / label / f"{label}-{i:03d}.png")


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg)))


@pytest.fixture
def one_torch_thread():
    """The tiny model and MTCNN are faster on one thread than fighting for two shared cores."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.slow
def test_model_trained_with_faces_on_scores_better_with_faces_on(tmp_path: Path, one_torch_thread) -> None:
    from dfscan.detector.predict import open_model, predict
    from dfscan.trt.model_info import inspect_model

    write_archive(tmp_path / "data", 24, seed=0)
    write_archive(tmp_path / "held-out", 10, seed=99)
    runner = CliRunner()
    out = runner.invoke(main, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--backbone", "tiny",
                               "--lstm-hidden", "16", "--epochs", "10", "--batch-size", "8", "--workers", "0",
                               "--no-augment", "--target-accuracy", "0", "--lr", "3e-3", "--faces", "on"],
                        catch_exceptions=False)
    assert out.exit_code == 0, out.output
    out = runner.invoke(main, ["export", str(tmp_path / "run" / "best.pt"), "--out", str(tmp_path / "model")],
                        catch_exceptions=False)
    assert out.exit_code == 0, out.output
    info = inspect_model(tmp_path / "model" / "model.onnx")
    assert info.input == "face-crop"
    assert json.loads((tmp_path / "model" / "model_info.json").read_text())["input"] == "face-crop"

    source = open_model(tmp_path / "model" / "model.onnx")
    items = [(str(p), 0) for p in sorted((tmp_path / "held-out" / "real").iterdir())]
    items += [(str(p), 1) for p in sorted((tmp_path / "held-out" / "fake").iterdir())]
    aucs = {}
    for faces in (True, False):
        pred = predict(source, items, faces=faces, threads=1)
        assert not pred.failed
        p_fake = np.exp(pred.logits[:, 1]) / np.exp(pred.logits).sum(axis=1)
        aucs[faces] = _auc(p_fake, pred.labels)
    print("AUC faces on / off:", aucs)
    assert aucs[True] >= 0.8, aucs
    assert aucs[True] > aucs[False] + 0.1, aucs
