"""Logits for labelled images from an exported model (as the scanner runs it) or a checkpoint.

Evaluation and calibration go through here. An ONNX model is run by ONNX
Runtime on images decoded by the scanner's own Pillow path, with the
normalisation, temperature and threshold of its ``model_info.json``: the
numbers measured are those a scan would give. A PyTorch checkpoint is run by
torch, with temperature 1 and threshold 0.5.

Videos (``media="video"``) are scored as sequences: T frames sampled by the
scanner's sampler (:mod:`detector.video_data`), through the export's video graph
(``model.video.onnx``, named in the sidecar) or the checkpoint's model on
(N, T, 3, H, W). An export without a video graph scores each frame with the
image graph and averages the logits over the frames: a weaker verdict (no
temporal model), said in :attr:`Predictions.scoring`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dfscan.core.constants import DEFAULT_FRAMES
from dfscan.detector.data import Item
from dfscan.detector.errors import DetectorError
from dfscan.trt.model_info import CLASSES, DEFAULT_THRESHOLD, DEFAULT_TEMPERATURE, ModelInfo, inspect_model
from dfscan.workers.images.decode import Preprocess
from dfscan.workers.reading.errors import ImageError

CHECKPOINT_SUFFIXES = (".pt", ".pth")


@dataclass(frozen=True)
class ModelSource:
    """The model being measured: what it is, how it wants its input, and its operating point."""

    path: Path
    kind: str  # "onnx" or "checkpoint"
    architecture: str
    classes: tuple[str, ...]
    preprocess: Preprocess
    temperature: float
    threshold: float
    sha256: str | None = None
    info: ModelInfo | None = None
    checkpoint: Path | None = None  # the training checkpoint behind it, when known
    input: str = "whole-image"  # "face-crop": evaluate and calibrate on face crops, as the scan's --faces auto
    frames: int = DEFAULT_FRAMES  # frames per video: the T the model was trained with (sidecar ``frames``)
    video_model: Path | None = None  # the export's sequence graph, when it has one

    def describe(self) -> dict:
        return {
            "path": str(self.path),
            "kind": self.kind,
            "architecture": self.architecture,
            "sha256": self.sha256,
            "temperature": self.temperature,
            "threshold": self.threshold,
            "frames": self.frames,
            "video_model": str(self.video_model) if self.video_model else None,
        }


@dataclass
class Predictions:
    """Logits in (real, fake) column order for the images that decoded; the others with their reason."""

    paths: list[str]
    labels: np.ndarray
    logits: np.ndarray
    failed: list[tuple[str, str]] = field(default_factory=list)
    scoring: str = "image"  # videos: "sequence" (the video graph or the checkpoint) or "per-frame mean" (weaker)

    def __len__(self) -> int:
        return len(self.paths)


def open_model(path: Path) -> ModelSource:
    """Describe ``path``: an ONNX file (or a folder holding ``model.onnx``) or a ``.pt``/``.pth`` checkpoint."""
    path = Path(path)
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        from dfscan.detector.model import load_checkpoint

        model, meta = load_checkpoint(path)
        cfg = model.config
        return ModelSource(
            path=path, kind="checkpoint", architecture=model.architecture, classes=cfg.classes,
            preprocess=Preprocess(size=cfg.input_size, mean=cfg.mean, std=cfg.std),
            temperature=DEFAULT_TEMPERATURE, threshold=DEFAULT_THRESHOLD, checkpoint=path, input=cfg.input,
            frames=cfg.frames,
        )
    info = inspect_model(path)
    ckpt = info.extra.get("checkpoint")
    return ModelSource(
        path=info.path, kind="onnx", architecture=info.architecture, classes=info.classes,
        preprocess=Preprocess(size=info.input_size, mean=info.mean, std=info.std),
        temperature=info.temperature, threshold=info.threshold, sha256=info.sha256, info=info,
        checkpoint=Path(ckpt) if isinstance(ckpt, str) and ckpt else None, input=info.input,
        frames=info.frames or DEFAULT_FRAMES, video_model=info.video_model,
    )


def predict(
    source: ModelSource,
    items: list[Item],
    *,
    batch_size: int = 64,
    device: str = "auto",
    threads: int = 2,
    progress: bool = False,
    faces: bool | None = None,
    media: str = "image",
    frames: int | None = None,
) -> Predictions:
    """Run ``source`` over ``items``; undecodable images are listed in ``failed``, not raised.

    ``faces`` (None: the model's own ``input``) scores the crop of each image's largest face.
    ``media`` "video": each item is a video, scored as ``frames`` (None: the model's T) sampled
    frames; a batch holds ``batch_size`` frames.
    """
    if set(CLASSES) - set(source.classes):
        raise DetectorError(f"{source.path}: classes {list(source.classes)} lack one of {list(CLASSES)}")
    columns = [source.classes.index(c) for c in CLASSES]
    if media == "video":
        return _predict_videos(source, items, columns, frames or source.frames, batch_size, threads, progress, device)
    infer, close = _onnx_infer(source) if source.kind == "onnx" else _torch_infer(source, device)
    try:
        use_faces = source.input == "face-crop" if faces is None else faces
        return _predict(infer, source, items, columns, batch_size, threads, progress, use_faces)
    finally:
        close()


def _predict(infer, source: ModelSource, items: list[Item], columns: list[int], batch_size: int, threads: int,
             progress: bool, faces: bool = False) -> Predictions:
    from dfscan.detector.data import eval_transform

    transform = eval_transform(source.preprocess, faces)
    return _score(infer, transform, items, columns, batch_size, threads, progress, unit="img")


def _score(infer, transform, items: list[Item], columns: list[int], per_batch: int, threads: int, progress: bool,
           *, unit: str, by_path: bool = False) -> Predictions:
    """``per_batch`` items at a time: decoded in a thread pool, the ones that decode inferred as one batch."""
    from tqdm import tqdm

    paths: list[str] = []
    labels: list[int] = []
    outs: list[np.ndarray] = []
    failed: list[tuple[str, str]] = []
    bar = tqdm(total=len(items), desc="predict", unit=unit, disable=not progress, leave=False)
    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
            for start in range(0, len(items), per_batch):
                chunk = items[start : start + per_batch]
                decoded = list(pool.map(lambda item: _decode(item[0], transform, by_path=by_path), chunk))
                batch = []
                for (path, label), out in zip(chunk, decoded):
                    if isinstance(out, str):
                        failed.append((path, out))
                    else:
                        batch.append(out)
                        paths.append(path)
                        labels.append(label)
                if batch:
                    outs.append(_infer_by_shape(infer, batch)[:, columns])
                bar.update(len(chunk))
    finally:
        bar.close()
    logits = np.concatenate(outs).astype(np.float64) if outs else np.zeros((0, len(CLASSES)))
    return Predictions(paths, np.asarray(labels, dtype=np.int64), logits, failed)


def _infer_by_shape(infer, arrays: list[np.ndarray]) -> np.ndarray:
    """``infer`` on ``arrays`` stacked, one call per shape (videos: sequences of different lengths), in order."""
    shapes = {a.shape for a in arrays}
    if len(shapes) == 1:
        return infer(np.stack(arrays))
    out: list[np.ndarray | None] = [None] * len(arrays)
    for shape in shapes:
        idx = [i for i, a in enumerate(arrays) if a.shape == shape]
        for i, row in zip(idx, infer(np.stack([arrays[i] for i in idx]))):
            out[i] = row
    return np.stack(out)


def _predict_videos(source: ModelSource, items: list[Item], columns: list[int], frames: int, batch_size: int,
                    threads: int, progress: bool, device: str) -> Predictions:
    from dfscan.detector.video_data import video_eval_transform

    if source.input == "face-crop":
        raise DetectorError(f"{source.path} was trained on face crops; face tracks through videos are not "
                            f"evaluated yet")
    transform = video_eval_transform(source.preprocess, frames, pad=False)  # the frames a scan would score
    if source.kind == "onnx":
        infer, close, scoring = _onnx_video_infer(source)
    else:
        (infer, close), scoring = _torch_infer(source, device), "sequence"
    clips = max(1, batch_size // frames)  # a batch is bounded by its frames, not its videos
    try:
        pred = _score(infer, transform, items, columns, clips, threads, progress, unit="video", by_path=True)
    finally:
        close()
    pred.scoring = scoring
    return pred


def _onnx_video_infer(source: ModelSource):
    """(infer on (N, T, 3, H, W), close, scoring): the video graph, or the image graph per frame.

    Per frame, as the scan's video stage does it: each frame's probabilities at the model's temperature,
    averaged over the frames, given back as logits that the same temperature turns into that mean.
    """
    if source.video_model is None:
        from dfscan.trt.base import softmax

        infer, close = _onnx_infer(source)
        t_scale = source.temperature

        def per_frame(batch: np.ndarray) -> np.ndarray:
            n, t = batch.shape[:2]
            logits = infer(batch.reshape(n * t, *batch.shape[2:]))
            mean = softmax(logits, t_scale).reshape(n, t, -1).mean(axis=1)
            return t_scale * np.log(np.clip(mean, 1e-12, 1.0))

        return per_frame, close, "per-frame mean"
    from dfscan.trt.model_info import inspect_video_model
    from dfscan.trt.onnxruntime import OnnxRuntime

    assert source.info is not None
    runtime = OnnxRuntime(inspect_video_model(source.info), intra_op_threads=0)  # checks the file and its sha256
    return runtime.infer, runtime.close, "sequence"


def _decode(path: str, transform, *, by_path: bool = False) -> np.ndarray | str:
    try:
        if by_path:  # videos: the sampler opens the file itself and reads only what it seeks to
            return transform(path)
        with open(path, "rb") as fh:
            return transform(fh.read())
    except ImageError as exc:
        return f"{exc.code}: {exc.message}"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"


def _onnx_infer(source: ModelSource):
    from dfscan.trt.base import run_batched
    from dfscan.trt.onnxruntime import OnnxRuntime

    assert source.info is not None
    runtime = OnnxRuntime(source.info, intra_op_threads=0)
    return (lambda batch: run_batched(runtime, batch)), runtime.close


def _torch_infer(source: ModelSource, device: str):
    import torch

    from dfscan.detector.model import load_checkpoint
    from dfscan.detector.train import resolve_device

    model, _ = load_checkpoint(source.path)
    dev = resolve_device(device)
    model.to(dev).eval()

    def infer(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(batch).to(dev)).float().cpu().numpy()

    return infer, lambda: None


def training_results_for(source: ModelSource) -> Path | None:
    """``training_results.json`` beside the checkpoint the model came from, if it is there."""
    from dfscan.detector.train import RESULTS_NAME

    candidates = []
    if source.checkpoint is not None:
        candidates.append(source.checkpoint.parent / RESULTS_NAME)
    candidates.append(source.path.parent / RESULTS_NAME)
    return next((p for p in candidates if p.is_file()), None)


def relpath(path: str, root: Path) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:
        return path
