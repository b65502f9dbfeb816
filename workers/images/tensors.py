"""Images decoded into torch tensors on the runtime's device: the image half of device-resident batches.

:class:`DeviceDecoder` wraps a decoder of :data:`~dfscan.workers.images.DECODERS`
and gives, per file, the model's normalised (3, H, W) float32 input as a
torch tensor on ``device`` (``cuda``, or ``cpu`` where torch CPU tensors stand
in for CUDA), or the file's :class:`~dfscan.workers.reading.ImageError` as
today.  The pixels are the host path's:

* Pillow decodes and resizes on the host as the Pillow decoder does (its
  resize is the model's reference); the batch's uint8 pixels go to the
  device once, as one tensor, and are normalised there (``x * a + b``, the
  same float32 arithmetic as :func:`~dfscan.workers.images.decode.to_tensor`);
* DALI decodes, resizes and normalises in its pipeline as the DALI decoder
  does (header checks, bisection, Pillow for what DALI can't take); its
  output reaches torch by DLPack, with no host copy on a GPU (one copy on
  the device, because DALI reuses its buffers).  What DALI hands to Pillow
  is uploaded once per batch.

``decode_rgb_batch`` gives the oriented full-resolution RGB images (H, W, 3)
uint8 on the device (DALI), for the face stage's detection and crops;
``upload_rgb`` brings Pillow's there.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from dfscan.workers.reading.reader import FileData

if TYPE_CHECKING:
    import torch

__all__ = ["DeviceDecoder", "normalise_on_device"]


@lru_cache(maxsize=16)
def _scale_and_shift(pre, device: str) -> tuple["torch.Tensor", "torch.Tensor"]:
    import torch

    a, b = pre.scale_and_shift()
    return torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)


def normalise_on_device(pixels: "torch.Tensor", pre) -> "torch.Tensor":
    """(N, H, W, 3) pixels (uint8, or whole grey levels) to the model's (N, 3, H, W) float32, as the host does it."""
    import torch

    a, b = _scale_and_shift(pre, str(pixels.device))
    return pixels.to(torch.float32).permute(0, 3, 1, 2) * a + b


class DeviceDecoder:
    """``decode_batch(files) -> [tensor | ImageError]`` with each tensor on ``device``; see the module's docstring."""

    thread_safe = False

    def __init__(self, base, device: str) -> None:
        self.base = base
        self.device = device
        self.pre = base.pre
        self.name = getattr(base, "name", "pillow")
        self.version = getattr(base, "version", None)
        if hasattr(base, "device_out"):  # DALI: its batches come out as torch tensors on our device
            base.device_out = self._from_dali

    def _from_dali(self, out: Any) -> list:
        """DALI's batch as torch tensors on the device, by DLPack; copied there (DALI reuses its output buffers).

        A batch of one shape (the model-size batch) is one tensor and one copy; full-resolution images for the
        face stage differ in size and go sample by sample.
        """
        import torch

        if out.is_dense_tensor():
            return list(torch.from_dlpack(out.as_tensor()).to(self.device, copy=True))
        return [torch.from_dlpack(out[i]).to(self.device, copy=True) for i in range(len(out))]

    def _upload(self, arrays: list[np.ndarray]) -> "torch.Tensor":
        """Host arrays of one shape as one tensor on the device: one copy for the batch."""
        import torch

        return torch.from_numpy(np.stack(arrays)).to(self.device)

    def decode_batch(self, files: Sequence[FileData]) -> list:
        pixels = getattr(self.base, "decode_pixels_batch", None)
        if pixels is not None:  # Pillow: uint8 pixels at the model's size, normalised on the device
            outs = pixels(files)
            ok = [i for i, o in enumerate(outs) if isinstance(o, np.ndarray)]
            if ok:
                batch = normalise_on_device(self._upload([outs[i] for i in ok]), self.pre)
                for k, i in enumerate(ok):
                    outs[i] = batch[k]
            return outs
        outs = list(self.base.decode_batch(files))  # DALI: tensors already on the device; Pillow's fallbacks not
        host = [i for i, o in enumerate(outs) if isinstance(o, np.ndarray)]
        if host:
            batch = self._upload([outs[i] for i in host])
            for k, i in enumerate(host):
                outs[i] = batch[k]
        return outs

    def decode_rgb_batch(self, files: Sequence[FileData]) -> list | None:
        """Oriented RGB images at full resolution on the device, where the base decoder makes them (DALI); else None."""
        hook = getattr(self.base, "decode_rgb_batch", None)
        return None if hook is None else self.upload_rgb(hook(files))

    def upload_rgb(self, images: list) -> list:
        """Host RGB images (H, W, 3) uint8 to the device, one copy each (their sizes differ); the rest as they are."""
        return [self._upload([np.asarray(im)])[0] if isinstance(im, np.ndarray) else im for im in images]

    def close(self) -> None:
        close = getattr(self.base, "close", None)
        if close is not None:
            close()
