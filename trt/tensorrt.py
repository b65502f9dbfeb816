"""The TensorRT runtime: a cached engine behind the same interface as ONNX Runtime.

Once per worker process: find (or build, under a lock) the engine for this
model, GPU type, TensorRT version and precision; deserialise it; allocate two
slots of pinned host and device buffers sized for the profile's largest batch;
create one CUDA stream.  Buffers and the stream come from PyTorch rather than
hand-written CUDA bindings.

Per batch, everything is queued on that stream without waiting: host-to-device
copy, ``execute_async_v3``, device-to-host copy, an event.  :meth:`infer_many`
queues batch k+1 (its copy into the other slot's pinned buffer, then its
transfer) before waiting for batch k's logits, so the host work and copies of
one batch overlap the inference of the previous one.  :meth:`infer` is the
one-batch case the :class:`trt.base.Runtime` interface asks for.

Given the video graph's description (``info.rank == 5``) it runs the 5-D
sequence engine (:mod:`dfscan.trt.engine`): FP32, batches of (N, T, 3, H, W)
with N and T inside the engine's profile (``max_frames`` the longest T).  Its
buffers are flat, sized for the profile's largest N x T, and each call views
the front of them in the call's own shape.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfscan.core.errors import first_line
from dfscan.core.gpu import probe_gpus
from dfscan.trt.cache import EngineCache
from dfscan.trt.model_info import ModelInfo, reexport_hint
from dfscan.trt.engine import (
    BuildOptions,
    build_engine,
    current_gpu,
    describe_surface,
    engine_key,
    import_tensorrt,
    sequence_frames,
    surface_of,
    tensorrt_status,
    what_it_builds,
)
from dfscan.trt.errors import EngineIncompatible, InferenceFailed, ModelRejected, RuntimeUnavailable
from dfscan.trt.precisions import choose_precision

PROBE_BATCH = 2
SLOTS = 2


def available() -> tuple[bool, str]:
    """TensorRT 10.x or newer importable, able to build strongly typed engines, a CUDA GPU, CUDA torch for buffers."""
    ok, why = tensorrt_status()
    if not ok:
        return False, why
    import tensorrt

    surface = surface_of(tensorrt)
    cannot = what_it_builds(surface)["fp32"]
    if cannot:
        return False, cannot
    probe = probe_gpus()
    if not probe.present:
        return False, f"no CUDA GPU: {probe.why_not} ({describe_surface(surface)})"
    try:
        import torch
    except ImportError as exc:
        return False, f"torch is not importable ({exc}); the TensorRT runtime uses it for GPU buffers"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build; install a CUDA build for the TensorRT runtime"
    return True, describe_surface(surface)


@dataclass
class _Slot:
    host_in: object  # torch pinned tensors / CUDA tensors / event
    dev_in: object
    dev_out: object
    host_out: object
    done: object


def _torch_dtype(trt, dtype):
    import torch

    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT8: torch.int8,
        trt.DataType.BOOL: torch.bool,
    }
    if hasattr(trt.DataType, "BF16"):
        table[trt.DataType.BF16] = torch.bfloat16
    try:
        return table[dtype]
    except KeyError:
        raise ModelRejected(f"engine tensor type {dtype} is not supported by dfscan") from None


class TensorRTRuntime:
    name = "tensorrt"
    device = "gpu"

    def __init__(
        self,
        info: ModelInfo,
        *,
        precision: str | None = None,
        engine_dir: Path | None = None,
        max_batch: int = 64,
        build_missing: bool = True,
    ) -> None:
        trt = import_tensorrt()
        import torch

        self._trt = trt
        self.info = info
        self.version = trt.__version__
        gpu = current_gpu()
        cache = EngineCache(engine_dir or info.folder.engines)
        frames = sequence_frames(info)  # None for the image graph
        cached = cache.cached_precisions(info.sha256, gpu.name, gpu.capability, trt.__version__, frames)
        # Sequence engines are FP32 (the video graph's own types); the requested precision is the image engine's.
        chosen, must_build = choose_precision("fp32" if frames else precision, gpu.capability, cached)
        if must_build and not build_missing:
            raise RuntimeUnavailable(
                f"no {chosen.name} engine for {info.path.name} on {gpu.name} in {cache.directory}; "
                f"build one with `dfscan build-engine {info.path} --precision {chosen.name}`"
            )
        if build_missing:  # reuses the cached engine while the ONNX file it came from is unchanged
            build_engine(info, BuildOptions(precision=chosen.name, max_batch=max_batch, engine_dir=cache.directory))
        key = engine_key(info, gpu, trt.__version__, chosen.name)
        loaded = cache.load(key)
        if loaded is None:
            raise EngineIncompatible(f"the {chosen.name} engine for {info.path.name} vanished from {cache.directory}")
        blob, record = loaded
        self.precision = chosen.name
        self.engine_path = cache.paths(key).engine

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(blob)
        if self._engine is None:
            raise EngineIncompatible(f"TensorRT {trt.__version__} can't deserialise {self.engine_path}; rebuild it")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if inputs != [info.input_name] or info.output_name not in outputs:
            raise EngineIncompatible(
                f"{self.engine_path} has inputs {inputs} and outputs {outputs}, the model has "
                f"{info.input_name!r} -> {info.output_name!r}; rebuild it"
            )
        self._input, self._output = info.input_name, info.output_name
        lo, _, hi = self._engine.get_tensor_profile_shape(self._input, 0)
        self.max_batch = int(hi[0])
        self.fixed_batch = int(hi[0]) if int(lo[0]) == int(hi[0]) else None
        # Sequence engines: the longest T of the profile (the video stage checks the scan's frames against it).
        self.max_frames = int(hi[1]) if len(hi) == 5 else None
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        h, w = info.input_size
        in_dtype = _torch_dtype(trt, self._engine.get_tensor_dtype(self._input))
        out_dtype = _torch_dtype(trt, self._engine.get_tensor_dtype(self._output))
        out_shape = self._engine.get_tensor_shape(self._output)
        classes = int(out_shape[len(out_shape) - 1])
        if classes <= 0:
            classes = len(info.classes)
        # Flat input buffers for the largest batch (x the longest T): a call views their front in its own shape.
        largest = self.max_batch * (self.max_frames or 1) * 3 * h * w
        self._slots = [
            _Slot(
                host_in=torch.empty((largest,), dtype=in_dtype).pin_memory(),
                dev_in=torch.empty((largest,), dtype=in_dtype, device="cuda"),
                dev_out=torch.empty((self.max_batch, classes), dtype=out_dtype, device="cuda"),
                host_out=torch.empty((self.max_batch, classes), dtype=out_dtype).pin_memory(),
                done=torch.cuda.Event(),
            )
            for _ in range(SLOTS)
        ]
        self._in_np = [s.host_in.numpy() for s in self._slots]
        self.record = record
        self._probe()

    def _probe(self) -> None:
        h, w = self.info.input_size
        n = self.fixed_batch or min(PROBE_BATCH, self.max_batch)
        item = (3, h, w) if self.max_frames is None else (self.max_frames, 3, h, w)
        try:
            out = self.infer(np.zeros((n, *item), dtype=np.float32))
        except InferenceFailed as exc:
            raise ModelRejected(f"{self.engine_path}: the engine fails on a test batch: {exc}") from None
        if out.shape != (n, len(self.info.classes)) or not np.all(np.isfinite(out)):
            raise ModelRejected(
                f"{self.engine_path}: a test batch of {n} gave output of shape {out.shape}, expected "
                f"({n}, {len(self.info.classes)}) finite logits. {reexport_hint(self.info)}"
            )

    # -- running -----------------------------------------------------------------------

    def _enqueue(self, slot_index: int, batch: np.ndarray) -> int:
        import torch

        n = batch.shape[0]
        if not 1 <= n <= self.max_batch:
            raise InferenceFailed(f"batch of {n} is outside the engine's profile (1..{self.max_batch})")
        if self.max_frames is not None and (batch.ndim != 5 or not 1 <= batch.shape[1] <= self.max_frames):
            raise InferenceFailed(f"sequences of shape {batch.shape[1:]} are outside the engine's profile "
                                  f"(T from 1 to {self.max_frames})")
        slot = self._slots[slot_index]
        size = batch.size
        # Host copy into pinned memory: CPU work that runs while the GPU works on the other slot.
        np.copyto(self._in_np[slot_index][:size].reshape(batch.shape), batch, casting="same_kind")
        with torch.cuda.stream(self._stream):
            slot.dev_in[:size].copy_(slot.host_in[:size], non_blocking=True)
            ctx = self._context
            ctx.set_input_shape(self._input, tuple(batch.shape))
            ctx.set_tensor_address(self._input, slot.dev_in.data_ptr())
            ctx.set_tensor_address(self._output, slot.dev_out.data_ptr())
            if not ctx.execute_async_v3(self._stream.cuda_stream):
                raise InferenceFailed("TensorRT execute_async_v3 failed (see its log)")
            slot.host_out[:n].copy_(slot.dev_out[:n], non_blocking=True)
            slot.done.record(self._stream)
        return n

    def _collect(self, slot_index: int, n: int) -> np.ndarray:
        slot = self._slots[slot_index]
        slot.done.synchronize()
        return slot.host_out[:n].float().numpy().copy()

    def infer_many(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Logits for each batch, in order, with the next batch queued before waiting on the current one."""
        pending: deque[tuple[int, int]] = deque()
        k = 0
        try:
            for batch in batches:
                for part in self._parts(batch):
                    slot = k % SLOTS
                    k += 1
                    # ``slot`` was last used by batch k-2, collected one step ago.
                    pending.append((slot, self._enqueue(slot, part)))
                    if len(pending) == SLOTS:  # batch k is queued: now wait for batch k-1
                        yield self._collect(*pending.popleft())
            while pending:
                yield self._collect(*pending.popleft())
        except InferenceFailed:
            raise
        except RuntimeError as exc:  # CUDA errors surface from torch as RuntimeError
            raise InferenceFailed(first_line(exc, 300)) from None

    def _parts(self, batch: np.ndarray) -> Iterator[np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.fixed_batch is not None and batch.shape[0] != self.fixed_batch:
            raise InferenceFailed(f"the engine takes batches of exactly {self.fixed_batch}, got {batch.shape[0]}")
        for start in range(0, batch.shape[0], self.max_batch):
            yield batch[start : start + self.max_batch]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        outs = list(self.infer_many([batch]))
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def close(self) -> None:
        if getattr(self, "_stream", None) is not None:
            self._stream.synchronize()
        self._slots = []
        self._in_np = []
        self._context = None
        self._engine = None
        self._runtime = None
        self._stream = None
