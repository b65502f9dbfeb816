"""The PyTorch runtime: the detector's ``torch.export`` program, on CUDA in FP16/BF16 or on the CPU in FP32.

The GPU path that needs nothing from NVIDIA's own index: ``dfscan export``
writes ``model.pt2`` (an ExportedProgram, ``torch.export.save``) beside
``model.onnx`` and records it in ``model_info.json`` under ``torch_program``
with its own sha256 and the sha256 of the ONNX file it was exported with, so
the pair can't drift apart unnoticed.  Loading needs no dfscan model code: the
program is self-contained aten ops.

On CUDA the batch runs under ``torch.autocast`` (FP16 by default, BF16 on
request): convolutions and matrix products in half precision, reductions and
softmax in FP32 (autocast's own lists).  A short batch is padded to the
largest batch seen, so the GPU sees one static shape per batch size.  On the CPU it runs in FP32 (BF16 on request,
for CPUs with fast BF16), the reference its logits are checked against ONNX
Runtime's with.  ``infer`` takes a NumPy array or any DLPack tensor (a DALI GPU
batch, a CUDA torch tensor): a tensor already on the device is used in place,
with no host round trip.

Given the video graph's description (``info.rank == 5``, :func:`inspect_video_model`)
it runs ``model.video.pt2`` on (N, T, 3, H, W) sequences.  That program was
exported at one fixed T (``nn.LSTM`` does not export with a dynamic length):
shorter sequences are zero-padded to it and their lengths passed beside them,
and the program masks the pad (:mod:`detector.padded`), so the logits are the
model's on the T real frames.  A longer sequence than the program takes is an
:class:`InferenceFailed`; the video stage refuses such a scan at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dfscan.core.errors import first_line
from dfscan.trt.errors import InferenceFailed, ModelRejected, RuntimeUnavailable
from dfscan.trt.model_info import (
    PROGRAM_KEY,
    PROGRAM_NAME,
    VIDEO_PROGRAM_KEY,
    VIDEO_PROGRAM_NAME,
    ModelInfo,
    reexport_hint,
    sha256_file,
)

PROBE_BATCH = 2
DEFAULT_MAX_BATCH = 1024  # larger batches are split (GPU memory), not refused
# Precisions per device; the first is the default.
DEVICE_PRECISIONS: dict[str, tuple[str, ...]] = {"cuda": ("fp16", "bf16", "fp32"), "cpu": ("fp32", "bf16")}


def available() -> tuple[bool, str]:
    """torch importable; says whether it will run on CUDA or on the CPU."""
    try:
        import torch
    except ImportError as exc:
        return False, f"torch is not importable ({exc}); pip install torch"
    ok, why = cuda_status()
    if ok:
        return True, f"CUDA ({why}), fp16 by default; needs model.pt2 from `dfscan export`"
    return True, f"CPU only, fp32 ({why}); needs model.pt2 from `dfscan export`"


def cuda_status() -> tuple[bool, str]:
    """Whether torch can run on a CUDA GPU here: the GPU's name, or why not.

    The NVIDIA driver is asked first, in a child process (:func:`dfscan.core.gpu.probe_gpus`): where
    there is no GPU, torch is not imported (half a gigabyte of memory for a scan that runs ONNX
    Runtime), and CUDA is never initialised in a process that Celery forks afterwards.
    """
    from dfscan.core.gpu import probe_gpus

    probe = probe_gpus()
    if not probe.present:
        return False, f"no CUDA GPU: {probe.why_not}"
    try:
        import torch
    except ImportError as exc:
        return False, f"torch is not importable ({exc})"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    try:
        if not torch.cuda.is_available():
            return False, f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable CUDA GPU"
        return True, torch.cuda.get_device_name(0)
    except Exception as exc:  # noqa: BLE001 - a broken driver raises anything
        return False, f"CUDA fails: {str(exc).strip()[:200]}"


def program_key(info: ModelInfo) -> str:
    """The sidecar entry of the program for ``info``'s graph: the image graph's, or the video graph's (rank 5)."""
    return VIDEO_PROGRAM_KEY if info.rank == 5 else PROGRAM_KEY


def program_frames(info: ModelInfo) -> int | None:
    """The fixed sequence length the video program of ``info`` was exported at (None: none recorded)."""
    entry = info.extra.get(VIDEO_PROGRAM_KEY)
    frames = entry.get("frames") if isinstance(entry, dict) else None
    return frames if isinstance(frames, int) and frames > 0 else None


def program_path(info: ModelInfo) -> Path:
    """The checked ``.pt2`` file of the model's graph; else :class:`RuntimeUnavailable` / :class:`ModelRejected`."""
    key = program_key(info)
    entry = info.extra.get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        what = f"its video graph's PyTorch export ({VIDEO_PROGRAM_NAME})" if info.rank == 5 else PROGRAM_NAME
        raise RuntimeUnavailable(
            f"{info.path.name} has no PyTorch export recorded in its model_info.json (the torch runtime runs "
            f"{what} from `dfscan export`). {reexport_hint(info)}"
        )
    if info.rank == 5 and program_frames(info) is None:
        raise ModelRejected(f"{info.folder.sidecar}: {key} records no sequence length (frames). {reexport_hint(info)}")
    path = info.folder.beside(entry["file"])
    if not path.is_file():
        raise RuntimeUnavailable(f"{path} (the PyTorch export of {info.path.name}) is missing. {reexport_hint(info)}")
    if entry.get("onnx_sha256") != info.sha256:
        raise ModelRejected(
            f"{path} was exported with another ONNX file (onnx_sha256 {str(entry.get('onnx_sha256'))[:12]}..., "
            f"{info.path.name} is {info.sha256[:12]}...); the two would score differently. {reexport_hint(info)}"
        )
    if sha256_file(path) != entry.get("sha256"):
        raise ModelRejected(
            f"{path} is not the file model_info.json records (sha256 differs); it was replaced or damaged. "
            f"{reexport_hint(info)}"
        )
    return path


def choose_device(device: str) -> str:
    if device == "auto":
        return "cuda" if cuda_status()[0] else "cpu"
    if device not in DEVICE_PRECISIONS:
        raise RuntimeUnavailable(f"unknown torch device {device!r}; use auto, cuda or cpu")
    if device == "cuda":
        ok, why = cuda_status()
        if not ok:
            raise RuntimeUnavailable(f"the torch runtime can't use CUDA here: {why}")
    return device


def choose_precision(device: str, precision: str | None) -> str:
    allowed = DEVICE_PRECISIONS[device]
    if precision is None:
        return allowed[0]
    if precision not in allowed:
        hint = ("; INT8 runs with --runtime onnxruntime (a dfscan quantize model) or tensorrt"
                if precision == "int8" else "")  # fmt: skip
        raise RuntimeUnavailable(
            f"the torch runtime runs {', '.join(allowed)} on {device.upper() if device == 'cuda' else 'the CPU'}, "
            f"not {precision}{hint}"
        )
    return precision


def pad_frames(x, t_pad: int):
    """(N, T, 3, H, W) zero-padded after its frames to T_pad, and the lengths (N,) the video program masks with."""
    import torch

    n, t = x.shape[0], x.shape[1]
    if t > t_pad:
        raise InferenceFailed(f"sequences of {t} frames, the video program takes at most {t_pad}")
    if t < t_pad:
        x = torch.cat([x, x.new_zeros((n, t_pad - t, *x.shape[2:]))], dim=1)
    return x, torch.full((n,), t, dtype=torch.int64, device=x.device)


def on_device(program, device: str):
    """The program with its weights *and* the tensors its graph creates on ``device``.

    Exported on the CPU, the graph creates the LSTM's initial state with
    ``device='cpu'`` baked in; ``.to("cuda")`` on the module would move the
    weights only.  ``move_to_device_pass`` rewrites both.
    """
    if device == "cpu":
        return program
    from torch.export.passes import move_to_device_pass

    return move_to_device_pass(program, device)


class TorchRuntime:
    """A ``torch.export`` program behind the :class:`trt.base.Runtime` interface."""

    name = "torch"
    fixed_batch = None

    def __init__(
        self, info: ModelInfo, *, device: str = "auto", precision: str | None = None,
        max_batch: int = DEFAULT_MAX_BATCH, threads: int = 0,
    ) -> None:  # fmt: skip
        import torch

        self.info = info
        self.version = torch.__version__
        self._device = choose_device(device)
        self.device = "gpu" if self._device == "cuda" else "cpu"
        self.precision = choose_precision(self._device, precision)
        self.max_batch = max_batch
        self._largest = 0
        self.program_path = program_path(info)
        if threads > 0 and self._device == "cpu":
            torch.set_num_threads(threads)
        try:
            program = on_device(torch.export.load(str(self.program_path)), self._device)
            module = program.module()
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign .pt2 raises anything
            raise ModelRejected(f"{self.program_path}: torch can't load the program: {first_line(exc, 300)}") from None
        self._module = module
        self._dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        # Sequences: the program's fixed T (shorter ones are padded and masked); None for the image graph.
        self.max_frames = program_frames(info) if info.rank == 5 else None
        self._probe()

    def _item_shape(self) -> tuple[int, ...]:
        """One item of a batch: an image (3, H, W), or a sequence of the program's length (T, 3, H, W)."""
        h, w = self.info.input_size
        return (3, h, w) if self.max_frames is None else (self.max_frames, 3, h, w)

    def _probe(self) -> None:
        try:
            out = self.infer(np.zeros((PROBE_BATCH, *self._item_shape()), dtype=np.float32))
        except InferenceFailed as exc:
            raise ModelRejected(f"{self.program_path}: the program fails on a test batch: {exc}") from None
        if out.shape != (PROBE_BATCH, len(self.info.classes)) or not np.all(np.isfinite(out)):
            raise ModelRejected(
                f"{self.program_path}: a test batch of {PROBE_BATCH} gave output of shape {out.shape}, expected "
                f"({PROBE_BATCH}, {len(self.info.classes)}) finite logits. {reexport_hint(self.info)}"
            )

    def _tensor(self, batch: Any):
        import torch

        if isinstance(batch, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        elif isinstance(batch, torch.Tensor):
            x = batch
        elif hasattr(batch, "__dlpack__"):
            # A DALI batch stays on its device; cloned there, because DALI reuses its buffer on its next run
            # (a device-to-device copy, small next to the inference).
            x = torch.from_dlpack(batch).clone()
        else:
            raise InferenceFailed(
                f"can't run a batch of type {type(batch).__name__}; give a NumPy array or a DLPack tensor"
            )
        h, w = self.info.input_size
        if self.max_frames is None:
            if x.ndim != 4 or tuple(x.shape[1:]) != (3, h, w):
                raise InferenceFailed(f"batch of shape {tuple(x.shape)}, expected (N, 3, {h}, {w})")
        elif x.ndim != 5 or tuple(x.shape[2:]) != (3, h, w) or not 1 <= x.shape[1] <= self.max_frames:
            raise InferenceFailed(f"batch of shape {tuple(x.shape)}, expected (N, T, 3, {h}, {w}) with T from 1 to "
                                  f"{self.max_frames} (the video program's length; re-export with --frames for more)")
        return x.to(self._device, torch.float32, non_blocking=True)

    def _run(self, x):
        import torch

        n = x.shape[0]
        if self._device == "cuda":
            # Static shapes: a short batch (the last of a chunk) is padded to the largest batch seen so far, so
            # the GPU sees the scan's batch size only (cuDNN plans and allocations are made once per shape).
            self._largest = max(self._largest, n)
            if n < self._largest:
                x = torch.cat([x, x.new_zeros((self._largest - n, *x.shape[1:]))])
        args = (x,)
        if self.max_frames is not None:
            args = pad_frames(x, self.max_frames)  # (x padded to the program's T, the real lengths)
        with torch.inference_mode():
            if self._dtype is None:
                out = self._module(*args)
            else:
                with torch.autocast(device_type=self._device, dtype=self._dtype):
                    out = self._module(*args)
        return out[:n]

    def infer_device(self, batch: Any):
        """Logits as a float32 tensor on the runtime's device (no copy to the host)."""
        import torch

        try:
            x = self._tensor(batch)
            outs = [self._run(x[i : i + self.max_batch]) for i in range(0, x.shape[0], self.max_batch)]
            return torch.cat(outs).float()
        except InferenceFailed:
            raise
        except RuntimeError as exc:  # shape guards, CUDA errors and out-of-memory all surface as RuntimeError
            raise InferenceFailed(first_line(exc, 300)) from None

    def infer(self, batch: Any) -> np.ndarray:
        return self.infer_device(batch).cpu().numpy()

    def close(self) -> None:
        self._module = None
        if self._device == "cuda":
            import torch

            torch.cuda.empty_cache()
