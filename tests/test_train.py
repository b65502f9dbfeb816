"""Training on a synthesised archive: the loss falls, runs resume where they stopped, outputs are what the original wrote."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dfscan.detector.data import Augment, DataError, eval_transform, find_splits, split_items, train_transform
from dfscan.detector.model import load_checkpoint
from dfscan.detector.synth import synthesize
from dfscan.detector.train import TrainConfig, TrainError, train
from dfscan.cli import main
from dfscan.workers.images.decode import Preprocess, decode_one

QUICK = dict(backbone="tiny", lstm_hidden=16, batch_size=8, workers=0, target_accuracy=None, evaluate_test=False)


@pytest.fixture(scope="module")
def easy_archive(tmp_path_factory):
    """Checkerboard fakes only: the trace a tiny model picks up within a few dozen steps."""
    root = tmp_path_factory.mktemp("easy") / "data"
    synthesize(root, 96, size=96, seed=0, layout="flat", upsamplers=("transposed_conv",))
    return root


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("small") / "data"
    synthesize(root, 40, size=64, seed=1)
    return root


def test_loss_falls(easy_archive, tmp_path):
    result = train(easy_archive, tmp_path / "run", TrainConfig(epochs=6, augment=False, **QUICK), log=lambda s: None)
    losses = result.history.train_loss
    assert len(losses) == 6 and len(result.history.batch_loss) == 6 * 9  # 67 training images in batches of 8
    assert losses[-1] < 0.8 * losses[0], losses
    assert np.mean(result.history.batch_loss[-9:]) < np.mean(result.history.batch_loss[:9])


def test_resume_continues_from_the_saved_epoch_and_matches_an_uninterrupted_run(small_archive, tmp_path):
    cfg = TrainConfig(epochs=3, **QUICK)
    straight = train(small_archive, tmp_path / "straight", cfg, log=lambda s: None)

    first = train(small_archive, tmp_path / "split", TrainConfig(epochs=1, **QUICK), log=lambda s: None)
    assert first.epochs_completed == 1 and first.resumed_from is None
    messages: list[str] = []
    second = train(small_archive, tmp_path / "split", cfg, log=messages.append)
    assert second.resumed_from == 1
    assert any("resuming" in m and "after epoch 1" in m for m in messages)
    assert second.history.epoch == [1, 2, 3]
    # The same data order, dropout masks and optimizer state: the same numbers as without the interruption.
    np.testing.assert_allclose(second.history.train_loss, straight.history.train_loss, rtol=1e-5)
    np.testing.assert_allclose(second.history.val_loss, straight.history.val_loss, rtol=1e-5)
    a, _ = load_checkpoint(tmp_path / "straight" / "last.pt")
    b, _ = load_checkpoint(tmp_path / "split" / "last.pt")
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(ta, tb, rtol=1e-5, atol=1e-6, msg=name)
    state = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["extra"]["train"]
    steps = len(second.history.batch_loss)
    assert steps == 3 * 4  # 28 training images in batches of 8
    assert all(int(s["step"]) == steps for s in state["optimizer"]["state"].values())


def test_resume_refuses_other_settings_and_fresh_starts_over(small_archive, tmp_path):
    train(small_archive, tmp_path / "run", TrainConfig(epochs=1, **QUICK), log=lambda s: None)
    other = {**QUICK, "lstm_hidden": 8}
    with pytest.raises(TrainError, match="lstm_hidden 16 -> 8"):
        train(small_archive, tmp_path / "run", TrainConfig(epochs=2, **other), log=lambda s: None)
    fresh = train(small_archive, tmp_path / "run", TrainConfig(epochs=1, **other), resume=False, log=lambda s: None)
    assert fresh.resumed_from is None and fresh.history.epoch == [1]


def test_early_stop_at_target_accuracy(small_archive, tmp_path):
    cfg = TrainConfig(epochs=5, **{**QUICK, "target_accuracy": 0.01})
    result = train(small_archive, tmp_path / "run", cfg, log=lambda s: None)
    assert result.stop_reason == "target-accuracy" and result.epochs_completed == 1
    again = train(small_archive, tmp_path / "run", cfg, log=lambda s: None)  # resuming a finished run does nothing
    assert again.history.epoch == [1]


def test_outputs_like_the_original(small_archive, tmp_path):
    cfg = TrainConfig(epochs=2, **{**QUICK, "evaluate_test": True})
    result = train(small_archive, tmp_path / "run", cfg, log=lambda s: None)
    results = json.loads((tmp_path / "run" / "training_results.json").read_text())
    assert results["epochs_completed"] == 2 and results["best_epoch"] == result.best_epoch
    assert results["best_val_accuracy"] == max(results["history"]["val_acc"])
    assert set(results["history"]) >= {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"}
    assert results["config"]["lr"] == 1e-3 and results["config"]["weight_decay"] == 1e-4
    assert 0.0 <= results["test_accuracy"] <= 1.0
    info = json.loads((tmp_path / "run" / "dataset_info.json").read_text())
    assert info["layout"] == "140k" and info["splits"]["train"] == {"total": 28, "real": 14, "fake": 14}
    model, meta = load_checkpoint(tmp_path / "run" / "best.pt")
    assert meta["extra"]["epoch"] == result.best_epoch and model.config.backbone == "tiny"


def test_defaults_are_the_original_projects():
    cfg = TrainConfig()
    assert (cfg.backbone, cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay) == ("resnext50_32x4d", 12, 64, 1e-3, 1e-4)
    assert (cfg.scheduler_patience, cfg.scheduler_factor, cfg.dropout, cfg.target_accuracy) == (3, 0.5, 0.3, 0.93)
    aug = Augment()
    assert (aug.hflip, aug.degrees, aug.brightness, aug.contrast) == (0.5, 10.0, 0.2, 0.2)


def test_training_sees_images_exactly_as_the_scanner_does(small_archive):
    pre = Preprocess()
    path = next(small_archive.rglob("*.jpg"))
    data = path.read_bytes()
    np.testing.assert_array_equal(eval_transform(pre)(data), decode_one(data, pre))
    none = Augment(hflip=0.0, degrees=0.0, brightness=0.0, contrast=0.0)
    np.testing.assert_array_equal(train_transform(pre, none)(data), decode_one(data, pre))
    flip = Augment(hflip=1.0, degrees=0.0, brightness=0.0, contrast=0.0)
    np.testing.assert_array_equal(train_transform(pre, flip)(data), decode_one(data, pre)[:, :, ::-1])
    torch.manual_seed(0)
    jittered = train_transform(pre, Augment())(data)
    assert jittered.shape == (3, 224, 224) and not np.array_equal(jittered, decode_one(data, pre))


def test_flat_layout_split_is_70_15_15_fixed_and_disjoint(tmp_path):
    synthesize(tmp_path / "flat", 200, size=32, seed=0, layout="flat")
    a, b = find_splits(tmp_path / "flat"), find_splits(tmp_path / "flat")
    assert a.layout == "flat" and (a.train, a.valid, a.test) == (b.train, b.valid, b.test)
    assert [len(a.train), len(a.valid), len(a.test)] == [140, 30, 30]
    every = [p for p, _ in a.train + a.valid + a.test]
    assert len(every) == len(set(every)) == 200
    assert a.counts()["valid"] == {"real": 15, "fake": 15}
    assert find_splits(tmp_path / "flat", seed=7).train != a.train
    assert len(split_items([("x", 0)] * 20)[0]) == 14


def test_unusable_data_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_splits(tmp_path / "nowhere")
    (tmp_path / "odd" / "cats").mkdir(parents=True)
    with pytest.raises(DataError, match="140k layout"):
        find_splits(tmp_path / "odd")
    (tmp_path / "half" / "train" / "real").mkdir(parents=True)
    (tmp_path / "half" / "train" / "fake").mkdir(parents=True)
    with pytest.raises(DataError, match="no valid/"):
        find_splits(tmp_path / "half")


def test_cli_train_then_resume(small_archive, tmp_path):
    out = tmp_path / "run"
    args = ["train", str(small_archive), "--out", str(out), "--backbone", "tiny", "--lstm-hidden", "16",
            "--batch-size", "8", "--workers", "0", "--target-accuracy", "0", "--max-steps", "2", "--no-progress"]
    first = CliRunner().invoke(main, args + ["--epochs", "1"])
    assert first.exit_code == 0, first.output
    assert "best validation accuracy" in first.output and (out / "best.pt").is_file()
    second = CliRunner().invoke(main, args + ["--epochs", "2"])
    assert second.exit_code == 0, second.output
    assert "resuming" in second.output and "epoch 2/2" in second.output
    results = json.loads((out / "training_results.json").read_text())
    assert results["history"]["epoch"] == [1, 2] and len(results["history"]["batch_loss"]) == 4
    bad = CliRunner().invoke(main, ["train", str(small_archive), "--out", str(out), "--backbone", "vgg"])
    assert bad.exit_code != 0 and "known backbones" in bad.output and "Traceback" not in bad.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trains_on_gpu(small_archive, tmp_path):
    result = train(small_archive, tmp_path / "gpu", TrainConfig(epochs=1, **{**QUICK, "device": "cuda"}),
                   log=lambda s: None)
    assert result.device == "cuda" and result.epochs_completed == 1
