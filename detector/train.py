"""Train the detector the way the original project did, resumably, on CPU or GPU.

Defaults are the original's: 12 epochs, batch 64, Adam (lr 1e-3, weight decay
1e-4), ReduceLROnPlateau on the validation loss (patience 3, factor 0.5),
cross-entropy, dropout 0.3, flip/rotation/colour-jitter augmentation, ImageNet
normalisation, early stop at 93 % validation accuracy.

A data set of videos trains the same model on sequences: each video gives T
frames (``frames``, default 16) sampled by the scanner's sampler, and the
BiLSTM runs over them. A batch then holds ``batch_size`` frames, i.e.
``batch_size // T`` videos (at least one), so memory does not grow with T; the
checkpoint records ``trained_on="videos"`` and T, and its export says so.

``OUT`` receives:

* ``best.pt``: the checkpoint with the best validation accuracy (what to export);
* ``last.pt``: the end of the latest epoch, with optimizer and scheduler state,
  from which an interrupted run resumes;
* ``training_results.json`` (history and outcome, rewritten after every epoch)
  and ``dataset_info.json`` (the splits), as the original wrote them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dfscan.detector.backbones import DEFAULT_BACKBONE
from dfscan.detector.data import SPLIT_SEED, Augment, Splits, eval_transform, find_splits, make_loader, train_transform
from dfscan.detector.errors import DetectorError
from dfscan.workers.images.decode import Preprocess
from dfscan.workers.video.sample import DEFAULT_FRAMES, DEFAULT_TIME_LIMIT_S

BEST_NAME = "best.pt"
LAST_NAME = "last.pt"
RESULTS_NAME = "training_results.json"
DATASET_NAME = "dataset_info.json"
RESULTS_FORMAT = 1
# Settings that shape the model or the data: a run can't resume under different ones.
_FIXED_ON_RESUME = ("backbone", "lstm_hidden", "dropout", "split_seed", "batch_size", "frames")


class TrainError(DetectorError):
    """Training can't start or continue as asked."""


@dataclass(frozen=True)
class TrainConfig:
    """Every training setting; the defaults are the original project's."""

    backbone: str = DEFAULT_BACKBONE
    backbone_weights: str | None = None
    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler_patience: int = 3
    scheduler_factor: float = 0.5
    dropout: float = 0.3
    lstm_hidden: int = 512
    target_accuracy: float | None = 0.93
    augment: bool = True
    rotation: float = 10.0
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    split_seed: int = SPLIT_SEED
    max_steps_per_epoch: int | None = None
    evaluate_test: bool = True
    # Train on the crop of each image's largest face, made as the scan's face stage makes it.
    faces: bool = False
    # Video data sets: frames sampled per video (the sequence length T), and the sampler's time limit per video.
    frames: int = DEFAULT_FRAMES
    video_time_limit_s: float = DEFAULT_TIME_LIMIT_S

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise TrainError(f"epochs and batch size must be at least 1, got {self.epochs} and {self.batch_size}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise TrainError(f"learning rate must be > 0 and weight decay >= 0, got {self.lr} and {self.weight_decay}")
        if not 0.0 <= self.dropout < 1.0:
            raise TrainError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.target_accuracy is not None and not 0.0 < self.target_accuracy <= 1.0:
            raise TrainError(f"target accuracy must be in (0, 1], got {self.target_accuracy}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise TrainError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        if not 1 <= self.frames <= 1024 or self.video_time_limit_s <= 0:
            raise TrainError(f"frames must be 1-1024 and the video time limit > 0, got {self.frames} and "
                             f"{self.video_time_limit_s}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise TrainError(f"max steps per epoch must be at least 1, got {self.max_steps_per_epoch}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class History:
    """Per-epoch curves (the training-curves figure) and every batch's loss."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    epoch_s: list[float] = field(default_factory=list)
    batch_loss: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, list]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> History:
        return cls(**{f.name: list(data.get(f.name, [])) for f in fields(cls)})


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    results_path: Path
    dataset_info_path: Path
    best_val_accuracy: float
    best_epoch: int
    epochs_completed: int
    stop_reason: str
    resumed_from: int | None
    test_accuracy: float | None
    device: str
    history: History


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"device {name!r} asked for, but torch sees no CUDA GPU here; use --device cpu")
    return name


def train(
    data_dir: Path,
    out_dir: Path,
    config: TrainConfig = TrainConfig(),
    *,
    resume: bool = True,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train on ``data_dir`` into ``out_dir``; with ``resume`` an existing ``last.pt`` there is continued."""
    out_dir = Path(out_dir)
    splits = find_splits(Path(data_dir), seed=config.split_seed)
    device = resolve_device(config.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / LAST_NAME, out_dir / BEST_NAME

    model, run = _open_run(last_path, config, resume=resume, log=log)
    if config.faces and model.config.input != "face-crop":
        from dataclasses import replace

        model.config = replace(model.config, input="face-crop")
    model.config = _sequence_config(model.config, splits, config, resumed=run.state is not None, path=last_path)
    model.to(device)
    _write_json(out_dir / DATASET_NAME, {**splits.info(), "written_at": _now()})
    loop = _make_loop(model, splits, config, device, run.state, out_dir=out_dir, progress=progress, log=log)

    started = time.perf_counter()
    for epoch in range(run.start_epoch, config.epochs + 1):
        if _fit_epoch(loop, run, epoch):
            break

    if not best_path.is_file():
        raise TrainError(f"no epoch completed in {out_dir}; nothing to keep")
    test_acc = _test_accuracy(loop, best_path, run.best_epoch) if config.evaluate_test and splits.test else None
    results = _write_results(out_dir, config, device, run.history, run.best_acc, run.best_epoch, run.stop_reason,
                             test_acc, splits, elapsed=time.perf_counter() - started)
    return TrainResult(
        out_dir=out_dir,
        best_checkpoint=best_path,
        last_checkpoint=last_path,
        results_path=results,
        dataset_info_path=out_dir / DATASET_NAME,
        best_val_accuracy=run.best_acc,
        best_epoch=run.best_epoch,
        epochs_completed=run.history.epoch[-1] if run.history.epoch else 0,
        stop_reason=run.stop_reason,
        resumed_from=run.resumed_from,
        test_accuracy=test_acc,
        device=device,
        history=run.history,
    )


@dataclass
class _Run:
    """What a run carries from epoch to epoch, and from ``last.pt`` into a resumed run."""

    history: History = field(default_factory=History)
    start_epoch: int = 1
    best_acc: float = -1.0
    best_epoch: int = 0
    resumed_from: int | None = None
    stop_reason: str = "epochs"
    state: dict[str, Any] | None = None  # the training state read from last.pt, when resuming


@dataclass(frozen=True)
class _Loop:
    """What stays the same through a run's epochs: the model, the data, the loss and the optimizer."""

    model: Any
    config: TrainConfig
    device: str
    splits: Splits
    out_dir: Path
    train_tf: Any
    eval_tf: Any
    batch_size: int
    val_loader: Any
    criterion: Any
    optimizer: Any
    scheduler: Any
    progress: bool
    log: Callable[[str], None]


def _open_run(last_path: Path, config: TrainConfig, *, resume: bool, log: Callable[[str], None]) -> tuple[Any, _Run]:
    """(model, run): continued from ``last_path`` when resuming and it exists, else a fresh model."""
    import torch

    from dfscan.detector.model import DeepfakeDetector, load_checkpoint

    if not (resume and last_path.is_file()):
        torch.manual_seed(config.seed)
        model = DeepfakeDetector(
            config.backbone,
            lstm_hidden=config.lstm_hidden,
            dropout=config.dropout,
            backbone_weights=Path(config.backbone_weights) if config.backbone_weights else None,
        )
        return model, _Run()
    model, meta = load_checkpoint(last_path)
    state = meta["extra"].get("train")
    if not isinstance(state, dict):
        raise TrainError(f"{last_path} is not a training checkpoint; use --fresh or another --out")
    _check_resumable(state["config"], config, last_path)
    run = _Run(
        history=History.from_dict(state["history"]),
        start_epoch=int(state["epoch"]) + 1,
        best_acc=float(state["best_val_acc"]),
        best_epoch=int(state["best_epoch"]),
        resumed_from=int(state["epoch"]),
        stop_reason=state.get("stop_reason", "epochs"),
        state=state,
    )
    if state.get("stop_reason") == "target-accuracy":
        log(f"{last_path}: that run already reached its target accuracy at epoch {run.resumed_from}; nothing to do")
        run.start_epoch = config.epochs + 1
    elif run.start_epoch <= config.epochs:
        log(f"resuming from {last_path} after epoch {run.resumed_from}")
    return model, run


def _make_loop(model, splits: Splits, config: TrainConfig, device: str, state: dict[str, Any] | None, *,
               out_dir: Path, progress: bool, log: Callable[[str], None]) -> _Loop:
    """Transforms, validation loader, loss, optimizer and scheduler; a resumed run's states loaded into them."""
    import torch

    pre = Preprocess(size=model.config.input_size, mean=model.config.mean, std=model.config.std)
    train_tf, eval_tf = _transforms(pre, splits.media, config)
    batch_size = _items_per_batch(splits.media, config, log)
    val_loader = make_loader(splits.valid, eval_tf, batch_size=batch_size, shuffle=False, workers=config.workers,
                             media=splits.media)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", patience=config.scheduler_patience, factor=config.scheduler_factor
    )
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
    return _Loop(model=model, config=config, device=device, splits=splits, out_dir=out_dir, train_tf=train_tf,
                 eval_tf=eval_tf, batch_size=batch_size, val_loader=val_loader, criterion=criterion,
                 optimizer=optimizer, scheduler=scheduler, progress=progress, log=log)


def _fit_epoch(loop: _Loop, run: _Run, epoch: int) -> bool:
    """Train and validate one epoch, save its checkpoints and results; True when the target accuracy is reached."""
    import torch

    from dfscan.detector.model import save_checkpoint

    config, history = loop.config, run.history
    t0 = time.perf_counter()
    loader = make_loader(loop.splits.train, loop.train_tf, batch_size=loop.batch_size, shuffle=True,
                         workers=config.workers, seed=config.seed * 100_003 + epoch, media=loop.splits.media)
    tr_loss, tr_acc, batch_losses = _run_epoch(
        loop.model, loader, loop.device, loop.criterion, loop.optimizer, desc=f"epoch {epoch}/{config.epochs} train",
        progress=loop.progress, max_steps=config.max_steps_per_epoch,
    )
    va_loss, va_acc, _ = _run_epoch(loop.model, loop.val_loader, loop.device, loop.criterion, None,
                                    desc=f"epoch {epoch}/{config.epochs} valid", progress=loop.progress)
    loop.scheduler.step(va_loss)
    history.epoch.append(epoch)
    history.train_loss.append(tr_loss)
    history.train_acc.append(tr_acc)
    history.val_loss.append(va_loss)
    history.val_acc.append(va_acc)
    history.lr.append(loop.optimizer.param_groups[0]["lr"])
    history.epoch_s.append(round(time.perf_counter() - t0, 3))
    history.batch_loss.extend(batch_losses)
    improved = va_acc > run.best_acc
    if improved:
        run.best_acc, run.best_epoch = va_acc, epoch
        save_checkpoint(loop.out_dir / BEST_NAME, loop.model,
                        {"epoch": epoch, "val_acc": va_acc, "train_config": config.to_dict()})
    reached = config.target_accuracy is not None and va_acc >= config.target_accuracy
    run.stop_reason = "target-accuracy" if reached else "epochs"
    train_state = {
        "epoch": epoch,
        "config": config.to_dict(),
        "history": history.to_dict(),
        "best_val_acc": run.best_acc,
        "best_epoch": run.best_epoch,
        "stop_reason": run.stop_reason,
        "optimizer": loop.optimizer.state_dict(),
        "scheduler": loop.scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    save_checkpoint(loop.out_dir / LAST_NAME, loop.model, {"train": train_state})
    loop.log(
        f"epoch {epoch}/{config.epochs}: train loss {tr_loss:.4f} acc {tr_acc:.2%} | "
        f"valid loss {va_loss:.4f} acc {va_acc:.2%} | lr {history.lr[-1]:.2e} | "
        f"{history.epoch_s[-1]:.1f} s{'  (best)' if improved else ''}"
    )
    _write_results(loop.out_dir, config, loop.device, history, run.best_acc, run.best_epoch, run.stop_reason, None,
                   loop.splits)
    if reached:
        loop.log(f"validation accuracy {va_acc:.2%} reached the target {config.target_accuracy:.2%}: stopping early")
    return reached


def _test_accuracy(loop: _Loop, best_path: Path, best_epoch: int) -> float:
    """The best checkpoint's accuracy on the test split."""
    from dfscan.detector.model import load_checkpoint

    best_model, _ = load_checkpoint(best_path)
    best_model.to(loop.device)
    splits = loop.splits
    test_loader = make_loader(splits.test, loop.eval_tf, batch_size=loop.batch_size, shuffle=False,
                              workers=loop.config.workers, media=splits.media)
    _, test_acc, _ = _run_epoch(best_model, test_loader, loop.device, loop.criterion, None, desc="test",
                                progress=loop.progress)
    loop.log(f"test accuracy of the best checkpoint (epoch {best_epoch}): {test_acc:.2%} on {len(splits.test)} "
             f"{splits.media}s")
    return test_acc


def _run_epoch(model, loader, device: str, criterion, optimizer, *, desc: str, progress: bool,
               max_steps: int | None = None) -> tuple[float, float, list[float]]:
    """One pass over ``loader``: trains when ``optimizer`` is given; returns (mean loss, accuracy, batch losses)."""
    import torch
    from tqdm import tqdm

    training = optimizer is not None
    model.train(training)
    total, correct, loss_sum = 0, 0, 0.0
    batch_losses: list[float] = []
    steps = len(loader) if max_steps is None else min(max_steps, len(loader))
    bar = tqdm(total=steps, desc=desc, unit="batch", disable=not progress, leave=False, dynamic_ncols=True)
    with torch.set_grad_enabled(training):
        for step, (images, labels) in enumerate(loader):
            if step >= steps:
                break
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            logits = model(images)
            loss = criterion(logits, labels)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainError(f"{desc}: the loss became {value}; lower the learning rate")
            n = labels.shape[0]
            total += n
            loss_sum += value * n
            correct += int((logits.argmax(1) == labels).sum())
            batch_losses.append(round(value, 6))
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / total:.4f}", acc=f"{correct / total:.3f}")
    bar.close()
    return (loss_sum / total if total else float("nan")), (correct / total if total else 0.0), batch_losses


def _sequence_config(cfg, splits: Splits, config: TrainConfig, *, resumed: bool, path: Path):
    """The model config with what the data set makes of it: images, or videos of ``config.frames`` frames."""
    from dataclasses import replace

    trained_on = "videos" if splits.media == "video" else "images"
    if resumed and cfg.trained_on != trained_on:
        raise TrainError(f"{path} was trained on {cfg.trained_on}, and {splits.root} holds {trained_on}; "
                         f"use --fresh or another --out")
    if trained_on == "videos" and config.faces:
        raise TrainError("--faces on is for image data sets; face tracks through videos are not trained yet")
    return replace(cfg, trained_on=trained_on, frames=config.frames if trained_on == "videos" else cfg.frames)


def _transforms(pre: Preprocess, media: str, config: TrainConfig):
    """(train transform, evaluation transform) for images (bytes in) or videos (path in)."""
    augment = Augment(degrees=config.rotation)
    if media == "video":
        from dfscan.detector.video_data import video_eval_transform, video_train_transform

        limit = config.video_time_limit_s
        eval_tf = video_eval_transform(pre, config.frames, limit)
        return (video_train_transform(pre, config.frames, augment, limit) if config.augment else eval_tf), eval_tf
    eval_tf = eval_transform(pre, config.faces)
    return (train_transform(pre, augment, faces=config.faces) if config.augment else eval_tf), eval_tf


def _items_per_batch(media: str, config: TrainConfig, log: Callable[[str], None]) -> int:
    """Images per batch, or videos per batch: ``batch_size`` frames make ``batch_size // frames`` videos."""
    if media != "video":
        return config.batch_size
    clips = max(1, config.batch_size // config.frames)
    log(f"videos: {config.frames} frames each, {clips} per batch ({clips * config.frames} frames)")
    return clips


def _check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    defaults = TrainConfig()  # a run saved before a setting existed ran with its default
    diffs = [f"{k} {saved.get(k, getattr(defaults, k))!r} -> {getattr(config, k)!r}" for k in _FIXED_ON_RESUME
             if saved.get(k, getattr(defaults, k)) != getattr(config, k)]
    if diffs:
        raise TrainError(
            f"{path} is a run with other settings ({'; '.join(diffs)}); use the same settings to resume, "
            f"--fresh to start over, or another --out"
        )


def _write_results(out_dir: Path, config: TrainConfig, device: str, history: History, best_acc: float,
                   best_epoch: int, stop_reason: str, test_acc: float | None, splits: Splits,
                   elapsed: float | None = None) -> Path:
    record = {
        "format": RESULTS_FORMAT,
        "written_at": _now(),
        "device": device,
        "config": config.to_dict(),
        "epochs_completed": history.epoch[-1] if history.epoch else 0,
        "stop_reason": stop_reason,
        "stopped_early": stop_reason == "target-accuracy",
        "best_epoch": best_epoch,
        "best_val_accuracy": best_acc,
        "final_train_accuracy": history.train_acc[-1] if history.train_acc else None,
        "final_val_accuracy": history.val_acc[-1] if history.val_acc else None,
        "test_accuracy": test_acc,
        "elapsed_s": None if elapsed is None else round(elapsed, 2),
        "checkpoint": BEST_NAME,
        "dataset": {"root": str(splits.root), "layout": splits.layout, **{k: sum(v.values()) for k, v in splits.counts().items()}},
        "history": history.to_dict(),
    }
    return _write_json(out_dir / RESULTS_NAME, record)


def _write_json(path: Path, record: dict) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
