"""Device-resident batches (``--batches device``): torch tensors on the runtime's device from decode to logits.

With the torch or TensorRT runtime on CUDA, the host path would decode on the
GPU (DALI), copy to the host for face detection and cropping and again for
the model.  Here the stages keep torch tensors on the runtime's device
(``cuda``; ``cpu`` where torch CPU tensors stand in, which is how the tests
run it) and the host sees only the logits:

* images: :class:`~dfscan.workers.images.tensors.DeviceDecoder` (DALI's output
  by DLPack, or Pillow's pixels uploaded once per batch and normalised on
  the device);
* faces: :class:`DeviceFaceDecoder`, the face decoder with detection on a
  device canvas (:func:`~dfscan.workers.faces.crops.find_faces`) and crops
  cut there (:func:`~dfscan.workers.faces.crops.crop_tensors`, the same
  squares and Pillow's own resampling);
* videos: :class:`DeviceVideoStage`, the video stage with each video's
  sampled frames uploaded once and its sequences made on the device;
* inference: :func:`stack_inputs` stacks a runtime call's inputs where they
  are; the torch runtime takes the tensor in place (``infer_device``), and
  a runtime that takes host arrays only (TensorRT today) gets one host copy
  per call.

Every row is made as on the host path (the same payloads, verdicts and row
fields); only where the pixels live changes.  :func:`batch_device` decides
from ``settings.batches`` and the runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from dfscan.core.settings import SettingsError
from dfscan.workers.faces.crops import crop_tensors, find_faces, resize_region
from dfscan.workers.images.tensors import DeviceDecoder, normalise_on_device
from dfscan.workers.scoring.face_stage import FaceDecoder
from dfscan.workers.scoring.video_stage import VideoItem, VideoStage

if TYPE_CHECKING:
    import torch

    from dfscan.workers.scoring.context import Resources

__all__ = ["DEVICE_RUNTIMES", "DeviceFaceDecoder", "DeviceVideoItem", "DeviceVideoStage", "batch_device",
           "device_image_decoder", "device_video_stage", "stack_inputs"]

# Runtimes that take a batch on the device.
DEVICE_RUNTIMES = ("torch", "tensorrt")


def batch_device(mode: str, runtime: Any) -> str | None:
    """The torch device batches live on (``cuda`` or ``cpu``), or None: NumPy on the host.

    ``auto``: the device when the runtime is torch or TensorRT on CUDA, else
    the host.  ``device`` with another runtime is a configuration error.
    """
    takes = runtime is not None and getattr(runtime, "name", None) in DEVICE_RUNTIMES
    on_gpu = getattr(runtime, "device", "cpu") == "gpu"
    if mode == "host" or (mode == "auto" and not (takes and on_gpu)):
        return None
    if not takes:
        raise SettingsError(f"--batches device needs --runtime {' or '.join(DEVICE_RUNTIMES)} (the runtime is "
                            f"{getattr(runtime, 'name', None)}); use --batches host or auto")
    return "cuda" if on_gpu else "cpu"


def _device(res: "Resources") -> str | None:
    return batch_device(res.settings.batches, res.runtimes.get("image"))


def stack_inputs(runtime: Any, arrays: Sequence[Any]):
    """One runtime call's batch: NumPy arrays stacked on the host, tensors stacked on their device.

    A runtime without ``infer_device`` takes host arrays only: it gets the
    stacked tensor copied to the host once.
    """
    if all(isinstance(a, np.ndarray) for a in arrays):
        return np.stack(arrays)
    import torch

    device = next(a.device for a in arrays if isinstance(a, torch.Tensor))
    batch = torch.stack([torch.as_tensor(a, device=device) for a in arrays])
    if not hasattr(runtime, "infer_device"):
        return batch.cpu().numpy()
    return batch


# -- images and faces ---------------------------------------------------------------------------


class DeviceFaceDecoder(FaceDecoder):
    """The face decoder on device tensors: the same groups, boxes, squares and rows as :class:`FaceDecoder`."""

    def __init__(self, base: DeviceDecoder, host: FaceDecoder, threads: int = 2) -> None:
        super().__init__(base, host.pre, host.options, host.detector, threads=threads)
        self.finder = host.finder  # the scan's own: a shared context wraps its detector (ScanContext.share)

    def _rgb_batch(self, files) -> list:
        rgbs = self.base.decode_rgb_batch(files)
        if rgbs is None:  # Pillow decodes on the host; each image goes to the device once
            images = self._pool.map(self._rgb_one, files)
            rgbs = self.base.upload_rgb([np.asarray(im) if isinstance(im, Image.Image) else im for im in images])
        return rgbs

    def _find(self, images: list) -> list:
        return find_faces(self.finder, images)

    def _cut(self, im, faces: list):
        crops, squares = crop_tensors(im, faces, self.options, self.pre.size)
        return normalise_on_device(crops.permute(0, 2, 3, 1), self.pre), squares


def device_image_decoder(res: "Resources"):
    """The image stage's decoder on device tensors (its own decoder instance), or None: batches on the host."""
    device = _device(res)
    if device is None:
        return None
    from dfscan.workers.images import create_decoder

    s = res.settings
    base = DeviceDecoder(create_decoder(s.decoder, res.pre, threads=s.decode_threads, batch_size=s.batch_size),
                         device)
    host_faces = res.face_decoder()
    if host_faces is None:
        return base
    return DeviceFaceDecoder(base, host_faces, threads=s.decode_threads)


# -- videos ---------------------------------------------------------------------------------------


class DeviceVideoItem(VideoItem):
    """A :class:`VideoItem` whose tracks' crops are (t, H, W, 3) uint8 tensors on the device."""

    def _normalised(self, crops):
        return normalise_on_device(crops, self.pre)


class DeviceVideoStage(VideoStage):
    """The video stage with each video's frames uploaded once; sequences made and normalised on the device."""

    device = "cpu"

    @classmethod
    def from_stage(cls, stage: VideoStage, device: str) -> "DeviceVideoStage":
        made = cls.__new__(cls)
        made.__dict__.update(stage.__dict__)
        made.device = device
        return made

    def _item(self, video):
        from dataclasses import replace

        item = super()._item(replace(video, frames=self._upload(video.frames)))
        return DeviceVideoItem(**{f.name: getattr(item, f.name) for f in fields(item)})

    def _upload(self, frames: list) -> list:
        """The sampled frames on the device: one copy for the video (one per frame if their sizes differ)."""
        import torch

        if len({f.shape for f in frames}) == 1:
            return list(torch.from_numpy(np.stack(frames)).to(self.device))
        return [torch.from_numpy(np.ascontiguousarray(f)).to(self.device) for f in frames]

    def _whole_frames(self, frames: list) -> "torch.Tensor":
        import torch

        h, w = self.pre.size
        out = [f if tuple(f.shape[:2]) == (h, w) else
               resize_region(f, (0, 0, int(f.shape[1]), int(f.shape[0])), (h, w)).permute(1, 2, 0).to(torch.uint8)
               for f in frames]
        return torch.stack(out)

    def _detect_frames(self, frames: list) -> list:
        return find_faces(self.faces, frames)

    def _track_crops(self, frames: list, boxes: list) -> "torch.Tensor":
        import torch

        assert self.faces is not None
        crops = [crop_tensors(frame, [(*box, 0.0)], self.faces.options, self.pre.size)[0][0]
                 for frame, box in zip(frames, boxes)]
        return torch.stack(crops).permute(0, 2, 3, 1).to(torch.uint8)


def device_video_stage(stage: VideoStage | None, res: "Resources") -> VideoStage | None:
    """``stage`` on device tensors where the scan's batches live there; as it is otherwise."""
    device = _device(res) if stage is not None else None
    return stage if device is None else DeviceVideoStage.from_stage(stage, device)
