"""Decode batches with NVIDIA DALI: nvJPEG on the GPU (``mixed``), or DALI's CPU decoders.

The pipeline takes the bytes the worker has already read (an external source),
decodes to RGB with the EXIF orientation applied (``adjust_orientation``, on
by default in DALI 2.x; checked against Pillow in the tests), resizes to the
model's size with a linear filter and antialiasing (DALI's equivalent of
Pillow's ``BILINEAR`` downscale, which widens its filter by the scale factor),
and normalises with the model's mean and std into NCHW float32.  The resize
runs in two passes, horizontal then vertical with 8-bit rounding between
them, because that is how Pillow does it.

DALI fails a whole batch on one undecodable sample and the pipeline is then
unusable (NVIDIA/DALI#3913), so:

* cheap header checks (:mod:`workers.reading.reader`) run first: a header declaring
  more pixels than the limit is refused outright; anything that is not a
  plain JPEG/PNG/WebP/BMP DALI decodes like Pillow, or that looks truncated,
  goes to the Pillow decoder, which is the reference anyway;
* when a batch still fails, the pipeline is rebuilt and the batch is bisected
  until the failing images are isolated; those go to Pillow too, which either
  decodes them (a verdict) or says why not (an error row with Pillow's
  reason).  Every other image of the batch keeps its DALI result.

Both decoders feed the model the same image: each file's header is parsed
by Pillow first (:func:`workers.images.decode.open_image`, the Pillow decoder's own
first step), so a file Pillow refuses over its metadata is refused here too,
and a file whose orientation DALI does not read (PNG eXIf, XMP, ImageMagick's
raw EXIF text: anything but a JPEG's EXIF segment) goes to Pillow.  Large
JPEGs are decoded in full by both (Pillow's draft mode is not used for the
model's input).

Batches in flight: the scan's prefetch thread runs this decoder on batch k+1
while the runtime infers batch k; within DALI the pipeline runs synchronously
(``prefetch_queue_depth=1``, which named external inputs need) so a failed
batch never takes a second, innocent one down with it.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dfscan.core.errors import first_line
from dfscan.workers.reading.dali_runs import DALI_FAILURES, build_or_unavailable, run_locating
from dfscan.workers.images.decode import PillowDecoder, Preprocess, open_image
from dfscan.workers.reading.errors import ImageError
from dfscan.workers.reading.reader import FileData

INPUT_NAME = "encoded"


def dali_status() -> tuple[bool, str]:
    """Whether DALI imports here; the version or why not."""
    import importlib.util

    if importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.dali") is None:
        return False, "NVIDIA DALI is not installed; pip install nvidia-dali-cuda130"
    try:
        import nvidia.dali
    except Exception as exc:  # noqa: BLE001 - a broken install raises anything
        return False, f"NVIDIA DALI does not import ({first_line(exc)})"
    return True, nvidia.dali.__version__


def dali_gpu_status() -> tuple[bool, str]:
    """Whether DALI's GPU (``mixed``) decoder can run: DALI, a CUDA GPU, and a driver new enough for DALI's CUDA."""
    ok, why = dali_status()
    if not ok:
        return False, why
    from dfscan.core.gpu import probe_gpus

    probe = probe_gpus()
    if not probe.present:
        return False, f"no CUDA GPU: {probe.why_not}"
    import nvidia.dali

    needed = int(getattr(nvidia.dali, "__cuda_version__", 0) or 0)
    if probe.driver_version is not None and needed and probe.driver_version // 1000 < needed // 1000:
        return False, (
            f"the NVIDIA driver supports CUDA {probe.driver_cuda()}, this DALI build needs CUDA {needed // 1000}.x; "
            f"update the driver or install the DALI wheel for your CUDA"
        )
    return True, ""


class DaliDecoder:
    """``decode_batch(files) -> [array | ImageError]``, like :class:`workers.images.decode.PillowDecoder`."""

    thread_safe = False  # a DALI pipeline runs one batch at a time

    def __init__(
        self, pre: Preprocess, *, device: str = "cpu", batch_size: int = 64, threads: int = 2, device_id: int = 0
    ) -> None:
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
        import nvidia.dali

        self.pre = pre
        self.device = device
        self.name = f"dali-{device}"
        self.version = nvidia.dali.__version__
        self.batch_size = batch_size
        self.threads = threads
        self.device_id = device_id
        self.fallback = PillowDecoder(pre, threads=threads)
        self.stats: Counter = Counter()
        # Device-resident batches (dfscan.workers.images.tensors): turns a DALI batch into a list of torch tensors on
        # the runtime's device (by DLPack, no host copy); None: NumPy arrays on the host.
        self.device_out: Callable[[Any], list] | None = None
        self._pipe = None
        self._lock = threading.Lock()

    # -- the pipeline -------------------------------------------------------------------

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        h, w = self.pre.size
        mean = [255.0 * m for m in self.pre.mean]
        std = [255.0 * s for s in self.pre.std]
        gpu = self.device == "gpu"

        @pipeline_def(
            batch_size=self.batch_size,
            num_threads=self.threads,
            device_id=self.device_id if gpu else None,
            prefetch_queue_depth=1,
        )
        def graph():
            encoded = fn.external_source(name=INPUT_NAME, dtype=types.UINT8)
            decode_args = {"jpeg_fancy_upsampling": True, "hw_decoder_load": 0.65} if gpu else {}
            images = fn.decoders.image(
                encoded, device="mixed" if gpu else "cpu", output_type=types.RGB, adjust_orientation=True,
                **decode_args,
            )
            # Linear + antialias is Pillow's BILINEAR: a triangle filter widened by the scale factor.
            # Pillow resizes horizontally, rounds to 8 bits, then vertically; doing the same here cuts
            # the mean difference from Pillow 2.5x (0.21 -> 0.08 of a level on 256x256 JPEGs).
            images = fn.resize(images, resize_x=w, mode="stretch", interp_type=types.INTERP_LINEAR, antialias=True)
            images = fn.resize(images, resize_x=w, resize_y=h, interp_type=types.INTERP_LINEAR, antialias=True)
            return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std)

        pipe = graph()
        pipe.build()
        self.stats["builds"] += 1
        return pipe

    def _ensure_pipe(self) -> None:
        """Build the pipeline if there is none; a pipeline that can't be built is the decoder's failure, not an image's."""
        if self._pipe is None:
            self._pipe = build_or_unavailable(self._build, f"{self.device} pipeline")

    def _run(self, datas: list[np.ndarray]) -> list[np.ndarray]:
        (out,) = self._pipe.run(**{INPUT_NAME: datas})
        if self.device_out is not None:
            return self.device_out(out)
        if self.device == "gpu":
            out = out.as_cpu()
        arr = out.as_array()
        return [arr[i] for i in range(arr.shape[0])]

    def _run_locating(self, datas: list[np.ndarray]) -> list[np.ndarray | None]:
        """DALI's output per sample; ``None`` for each sample that fails it, found by bisection."""
        def run(part: list[np.ndarray]) -> list[np.ndarray]:
            self._ensure_pipe()
            return self._run(part)

        return run_locating(run, datas, self._drop_pipe)

    def _drop_pipe(self) -> None:
        self.stats["failed_runs"] += 1
        self._pipe = None  # a failed pipeline is not reused

    def decode_dense(self, files: Sequence[FileData]):
        """The whole batch as one DALI tensor (N, 3, H, W) float32, or None when any file needs the careful path.

        For keeping batches on the GPU from decode to logits: with ``device="gpu"``
        the tensor lives on the GPU and exposes ``__dlpack__``, so a runtime that
        takes DLPack (``dfscan.trt.pytorch.TorchRuntime.infer``) reads it in place,
        with no host round trip.  Only the common case takes this path: every file
        passes the header checks and DALI decodes the batch in one run; otherwise
        it returns None and the caller uses :meth:`decode_batch`, which isolates
        the bad files.  The tensor is DALI's output buffer, valid until the next
        call: consume (or copy) it first.
        """
        if not files or len(files) > self.batch_size:
            return None
        for f in files:
            header = f.header
            if not header.dali_safe or (header.pixels is not None and header.pixels > self.pre.max_pixels):
                return None
        with self._lock:
            self._ensure_pipe()
            try:
                (out,) = self._pipe.run(**{INPUT_NAME: [np.frombuffer(f.data, dtype=np.uint8) for f in files]})
            except DALI_FAILURES:
                self._drop_pipe()
                return None
        self.stats["dali"] += len(files)
        return out.as_tensor()

    # -- the decoder interface ----------------------------------------------------------

    def decode_batch(self, files: Sequence[FileData]) -> list[np.ndarray | ImageError]:
        results: list[np.ndarray | ImageError | None] = [None] * len(files)
        to_dali: list[int] = []
        to_pillow: list[int] = []
        for i, f in enumerate(files):
            # Pillow's own header parse, exactly as the Pillow decoder does it: the same
            # refusals (pixel limit, text-chunk bombs, unknown iCCP compression) and the
            # orientation Pillow would apply, whichever decoder is chosen.
            try:
                im = open_image(f.data, self.pre.max_pixels, f.header, self.pre.max_decode_bytes)
            except ImageError as exc:
                results[i] = exc
                self.stats["refused"] += 1
                continue
            header = f.header
            if not header.dali_safe:
                to_pillow.append(i)
            elif _orientation_dali_misses(im):
                to_pillow.append(i)
                self.stats["orientation"] += 1
            else:
                to_dali.append(i)
            im.close()
        with self._lock:
            for start in range(0, len(to_dali), self.batch_size):
                part = to_dali[start : start + self.batch_size]
                outs = self._run_locating([np.frombuffer(files[i].data, dtype=np.uint8) for i in part])
                for i, out in zip(part, outs):
                    if out is None:
                        to_pillow.append(i)
                        self.stats["rejected"] += 1
                    else:
                        results[i] = out
                        self.stats["dali"] += 1
        if to_pillow:
            self.stats["pillow"] += len(to_pillow)
            for i, out in zip(to_pillow, self.fallback.decode_batch([files[i] for i in to_pillow])):
                results[i] = out
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def decode_rgb_batch(self, files: Sequence[FileData]) -> list[np.ndarray | ImageError]:
        """Oriented RGB images at full resolution (HWC uint8), decoded once: the face stage's input."""
        if getattr(self, "_rgb", None) is None:
            from dfscan.workers.images._dali_rgb import DaliRgb

            self._rgb = DaliRgb(self)
        return self._rgb.decode(files)

    def close(self) -> None:
        with self._lock:
            self._pipe = None
            self._rgb = None
        self.fallback.close()


def _orientation_dali_misses(im) -> str:
    """Why DALI would not orient ``im`` as Pillow's ``exif_transpose`` does, or ''.

    DALI reads the orientation of a JPEG's EXIF segment only.  Pillow also
    takes it from PNG eXIf chunks, ImageMagick's "Raw profile type exif" text
    chunk, and XMP ``tiff:Orientation`` in any format: such files go to Pillow.
    """
    from PIL import Image

    try:
        orientation = im.getexif().get(_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - unreadable metadata: let the reference decoder decide
        return "unreadable EXIF"
    if orientation in (None, 1):
        return ""
    if im.format == "JPEG" and "exif" in im.info:
        exif = Image.Exif()
        try:
            exif.load(im.info["exif"])
        except Exception:  # noqa: BLE001
            return "unreadable EXIF"
        if exif.get(_ORIENTATION) == orientation:
            return ""
    return f"orientation {orientation} from {im.format} metadata DALI does not read"


_ORIENTATION = 0x0112
