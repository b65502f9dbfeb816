"""Labelled image folders for training and evaluation, and the torch datasets that read them.

Two layouts are understood (a table, looked up in order):

* ``140k``: the "140k Real and Fake Faces" layout, ``train/``, ``valid/`` (or
  ``val/``, ``validation/``) and ``test/``, each with ``real/`` and ``fake/``.
* ``flat``: only ``real/`` and ``fake/``; split 70/15/15 per class with a fixed seed.

A data set holds images or videos (:data:`MEDIA`), never both: videos are
sequences of sampled frames (:mod:`detector.video_data`), one label per video.

Images are read exactly as the scanner reads them (:func:`workers.images.decode.load_rgb`
then :func:`workers.images.decode.to_tensor`), so what the model learns from and what
it is shown in a scan are made the same way. Training adds the original
project's augmentation on the decoded RGB image, before normalisation.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from dfscan.core.registry import Registry
from dfscan.detector.errors import DetectorError
from dfscan.trt.model_info import CLASSES
from dfscan.workers.images.decode import Preprocess, load_rgb, to_tensor
from dfscan.workers.video.sample import VIDEO_EXTENSIONS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# What a data set's files are, with the suffixes that count as one.
MEDIA: dict[str, tuple[str, ...]] = {"image": IMAGE_EXTENSIONS, "video": VIDEO_EXTENSIONS}
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)
SPLIT_SEED = 42
SPLIT_NAMES = ("train", "valid", "test")
# Folder names accepted for each split of the 140k layout, first match wins.
_SPLIT_ALIASES = {"train": ("train", "training"), "valid": ("valid", "val", "validation"), "test": ("test", "testing")}


class DataError(DetectorError):
    """A data folder has no layout dfscan understands, or a split is empty."""


Item = tuple[str, int]  # (path, class index in CLASSES)


@dataclass(frozen=True)
class Splits:
    """The labelled items of each split, and where they came from."""

    root: Path
    layout: str
    train: list[Item]
    valid: list[Item]
    test: list[Item]
    classes: tuple[str, ...] = CLASSES
    seed: int | None = None
    notes: dict = field(default_factory=dict)
    media: str = "image"  # "video": each item is a video, scored as a sequence of sampled frames

    def get(self, name: str) -> list[Item]:
        if name not in SPLIT_NAMES:
            raise DataError(f"unknown split {name!r}; known splits: {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            name: {c: sum(1 for _, y in self.get(name) if y == i) for i, c in enumerate(self.classes)}
            for name in SPLIT_NAMES
        }

    def info(self) -> dict:
        """What ``dataset_info.json`` holds."""
        counts = self.counts()
        return {
            "root": str(self.root),
            "layout": self.layout,
            "classes": list(self.classes),
            "split_seed": self.seed,
            "split_fractions": list(SPLIT_FRACTIONS) if self.layout == "flat" else None,
            "splits": {name: {"total": sum(c.values()), **c} for name, c in counts.items()},
            "total": sum(sum(c.values()) for c in counts.values()),
            "media": self.media,
            **self.notes,
        }


def _files(folder: Path, extensions: tuple[str, ...]) -> list[str]:
    """Files under ``folder`` (recursively) with one of ``extensions``, sorted so that a listing is reproducible."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(extensions)]
    return found


def _class_dirs(folder: Path, classes: tuple[str, ...]) -> dict[str, Path] | None:
    """``{class: folder}`` when ``folder`` has a sub-folder per class (case-insensitive), else None."""
    if not folder.is_dir():
        return None
    by_lower = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    if all(c in by_lower for c in classes):
        return {c: by_lower[c] for c in classes}
    return None


def _labelled(dirs: dict[str, Path], classes: tuple[str, ...], extensions: tuple[str, ...]) -> list[Item]:
    return [(path, classes.index(c)) for c in classes for path in _files(dirs[c], extensions)]


def _layout_140k(root: Path, classes: tuple[str, ...], seed: int, extensions: tuple[str, ...]) -> Splits | None:
    found: dict[str, list[Item]] = {}
    for split, aliases in _SPLIT_ALIASES.items():
        for alias in aliases:
            dirs = _class_dirs(root / alias, classes)
            if dirs is not None:
                found[split] = _labelled(dirs, classes, extensions)
                break
    if "train" not in found:
        return None
    if "valid" not in found:
        raise DataError(f"{root} has train/ but no valid/ (or val/) folder with {' and '.join(classes)} inside")
    return Splits(root, "140k", found["train"], found["valid"], found.get("test", []), classes)


def _layout_flat(root: Path, classes: tuple[str, ...], seed: int, extensions: tuple[str, ...]) -> Splits | None:
    dirs = _class_dirs(root, classes)
    if dirs is None:
        return None
    parts: tuple[list[Item], list[Item], list[Item]] = ([], [], [])
    for i, c in enumerate(classes):
        items = [(p, i) for p in _files(dirs[c], extensions)]
        for part, chunk in zip(parts, split_items(items, seed=seed + i)):
            part.extend(chunk)
    return Splits(root, "flat", *parts, classes=classes, seed=seed)


def split_items(items: list[Item], fractions: tuple[float, ...] = SPLIT_FRACTIONS, seed: int = SPLIT_SEED):
    """``items`` shuffled with ``seed`` and cut by ``fractions`` (70/15/15); the same seed gives the same cut."""
    order = np.random.default_rng(seed).permutation(len(items))
    shuffled = [items[j] for j in order]
    n = len(items)
    n_valid = int(round(n * fractions[1]))
    n_test = int(round(n * fractions[2]))
    n_train = n - n_valid - n_test
    return shuffled[:n_train], shuffled[n_train : n_train + n_valid], shuffled[n_train + n_valid :]


# Data set layouts, tried in this order: each reads (root, classes, seed, extensions) as Splits, or None.
LAYOUTS: Registry[Callable[[Path, tuple[str, ...], int, tuple[str, ...]], Splits | None]] = Registry(
    "layout", entries={"140k": _layout_140k, "flat": _layout_flat}
)


def find_splits(
    root: Path, *, classes: tuple[str, ...] = CLASSES, seed: int = SPLIT_SEED, media: str = "auto"
) -> Splits:
    """The labelled splits of ``root`` in the first layout that fits; raises :class:`DataError`.

    ``media`` "image" or "video" lists only those files; "auto" lists both and
    takes what the folder holds (a folder holding both is refused: a model
    learns from one kind of input).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    if media != "auto" and media not in MEDIA:
        raise DataError(f"unknown media {media!r}; known: auto, {', '.join(MEDIA)}")
    extensions = tuple(e for m in MEDIA for e in MEDIA[m]) if media == "auto" else MEDIA[media]
    for read in LAYOUTS.values():
        splits = read(root, classes, seed, extensions)
        if splits is not None:
            if not splits.train or not splits.valid:
                raise DataError(f"{root}: the {splits.layout} layout has an empty train or validation split")
            return replace(splits, media=media if media != "auto" else _media_of(root, splits))
    want = "/".join(classes)
    raise DataError(
        f"{root} has neither train/ and valid/ folders with {want} inside (the 140k layout) "
        f"nor {want} folders; see `dfscan train --help`"
    )


def _media_of(root: Path, splits: Splits) -> str:
    """"image" or "video": what every listed file of ``splits`` is; raises when it holds both."""
    paths = [p for name in SPLIT_NAMES for p, _ in splits.get(name)]
    videos = sum(1 for p in paths if p.lower().endswith(VIDEO_EXTENSIONS))
    if videos and videos < len(paths):
        raise DataError(
            f"{root} holds {len(paths) - videos} images and {videos} videos; a data set is one or the other "
            f"(keep them in separate folders)"
        )
    return "video" if videos else "image"


# ------------------------------------------------------------------ transforms


def eval_transform(pre: Preprocess, faces: bool = False) -> Callable[[bytes], np.ndarray]:
    """Bytes to a normalised (3, H, W) float32 array, exactly as the scanner's Pillow decoder does.

    With ``faces`` the array is the crop of the image's largest face, made as
    the scan's face stage makes it (an image without a face is used whole).
    """
    if faces:
        crop = _face_cropper(pre)
        return lambda data: to_tensor(crop(data), pre)

    def run(data: bytes) -> np.ndarray:
        return to_tensor(load_rgb(data, None, pre.max_pixels), pre)

    return run


# The largest face's crop square per image (by the bytes' digest), so that each epoch doesn't detect again.
_FACE_SQUARES: dict[bytes, tuple[int, int, int] | None] = {}


def _face_cropper(pre: Preprocess) -> Callable[[bytes], "object"]:
    """Bytes to a PIL image of the largest face's crop at the model's size (the whole image when it has no
    face); the detector loads on first use, in each DataLoader worker."""
    import hashlib

    state: dict = {}

    def run(data: bytes):
        from PIL import Image

        from dfscan.workers.faces import FaceOptions, create_face_detector
        from dfscan.workers.scoring.face_stage import FaceDecoder, largest_face

        im = load_rgb(data, None, pre.max_pixels)
        key = hashlib.blake2b(data, digest_size=16).digest()
        if key not in _FACE_SQUARES:
            stage = state.get("stage")
            if stage is None:
                stage = state["stage"] = FaceDecoder(None, pre, FaceOptions(), create_face_detector("mtcnn", "cpu"))
            face = largest_face(np.asarray(im), stage)
            _FACE_SQUARES[key] = None if face is None else face[1]
        square = _FACE_SQUARES[key]
        if square is None:
            return im
        x0, y0, side = square
        h, w = pre.size
        return im.resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side))

    return run


@dataclass(frozen=True)
class Augment:
    """The original project's augmentation: flip (p=0.5), rotation up to 10 degrees, colour jitter 0.2/0.2."""

    hflip: float = 0.5
    degrees: float = 10.0
    brightness: float = 0.2
    contrast: float = 0.2


def augment_pipeline(augment: Augment):
    """The torchvision v2 transform of ``augment``: flip, rotation, colour jitter."""
    from torchvision.transforms import v2

    steps: list = [v2.RandomHorizontalFlip(augment.hflip)]
    if augment.degrees:
        steps.append(v2.RandomRotation(augment.degrees, interpolation=v2.InterpolationMode.BILINEAR))
    if augment.brightness or augment.contrast:
        steps.append(v2.ColorJitter(brightness=augment.brightness, contrast=augment.contrast))
    return v2.Compose(steps)


def train_transform(pre: Preprocess, augment: Augment = Augment(), faces: bool = False) -> Callable[[bytes], np.ndarray]:
    """Decode as the scanner does, resize, augment the RGB image, then normalise as the scanner does."""
    pipeline = augment_pipeline(augment)
    h, w = pre.size
    crop = _face_cropper(pre) if faces else None

    def run(data: bytes) -> np.ndarray:
        from PIL import Image

        im = crop(data) if crop is not None else load_rgb(data, None, pre.max_pixels)
        if im.size != (w, h):
            im = im.resize((w, h), Image.Resampling.BILINEAR)  # the same resize as to_tensor's
        return to_tensor(pipeline(im), pre)

    return run


# --------------------------------------------------------------------- torch


def _torch_dataset_class():
    import torch
    from torch.utils.data import Dataset

    class ImageFolderDataset(Dataset):
        """(image tensor, label) pairs read from files; a file that can't be decoded raises DataError with its reason.

        ``by_path``: the transform takes the path, not the bytes (videos: the sampler reads what it seeks to).
        """

        def __init__(self, items: list[Item], transform: Callable, by_path: bool = False) -> None:
            self.items = list(items)
            self.transform = transform
            self.by_path = by_path

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, index: int):
            from dfscan.workers.reading.errors import ImageError

            path, label = self.items[index]
            try:
                if self.by_path:
                    return torch.from_numpy(self.transform(path)), label
                with open(path, "rb") as fh:
                    data = fh.read()
                return torch.from_numpy(self.transform(data)), label
            except (OSError, ImageError) as exc:
                raise DataError(f"{path}: {exc}; remove or replace the file") from None

    return ImageFolderDataset


def make_dataset(items: list[Item], transform: Callable, *, by_path: bool = False):
    """A ``torch.utils.data.Dataset`` over ``items``; ``by_path``: ``transform`` takes a path, not bytes."""
    return _torch_dataset_class()(items, transform, by_path)


def make_loader(items: list[Item], transform, *, batch_size: int, shuffle: bool, workers: int = 0, seed: int = 0,
                media: str = "image"):
    """A DataLoader; shuffling follows ``seed`` (and the epoch, via :func:`torch.Generator` state).

    ``media`` "video": ``transform`` takes a path and gives a clip (see :mod:`detector.video_data`).
    """
    import torch
    from torch.utils.data import DataLoader

    dataset = make_dataset(items, transform, by_path=media == "video")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=generator,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
