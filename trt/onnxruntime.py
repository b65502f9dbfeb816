"""ONNX Runtime: the CPU runtime and the reference the GPU path is checked against."""

from __future__ import annotations

import os

import numpy as np

from dfscan.core.errors import first_line
from dfscan.trt.errors import InferenceFailed, ModelRejected, RuntimeUnavailable
from dfscan.trt.model_info import ModelInfo, reexport_hint

PROBE_BATCH = 2
PROBE_FRAMES = 2


def available() -> tuple[bool, str]:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return False, f"onnxruntime is not installed ({exc}); pip install onnxruntime"
    return True, ""


class OnnxRuntime:
    """An ``onnxruntime.InferenceSession`` behind the :class:`trt.base.Runtime` interface.

    The session is created once per process; ``intra_op_threads=0`` lets ONNX
    Runtime use every physical core, which is what inference needs on CPU
    (decoding runs in other threads and costs little).
    """

    name = "onnxruntime"

    def __init__(self, info: ModelInfo, *, intra_op_threads: int = 0, providers: list[str] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeUnavailable(f"onnxruntime is not installed ({exc}); pip install onnxruntime") from None
        self.version = ort.__version__
        self.info = info
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        # Waiting threads sleep rather than spin: the scan's other threads (decoding, the face stage's lanes)
        # run on the same cores while the model runs, and a spinning thread takes their time (docs/faces.md).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        providers = providers or ["CPUExecutionProvider"]
        self.device = "gpu" if providers[0].startswith(("CUDA", "Tensorrt")) else "cpu"
        try:
            self._session = ort.InferenceSession(os.fspath(info.path), sess_options=opts, providers=providers)
        except Exception as exc:  # ORT raises its own exception types; all mean "unusable model"
            raise ModelRejected(f"{info.path}: ONNX Runtime can't load the model: {first_line(exc, 300)}") from None
        self.precision = str(info.extra.get("precision", "fp32"))
        self._input = info.input_name
        self._output = info.output_name
        self.fixed_batch = info.fixed_batch
        self._probe()

    def _probe(self) -> None:
        """Run a zero batch now so a bad model fails before the scan, never half-way."""
        h, w = self.info.input_size
        n = self.fixed_batch or PROBE_BATCH
        # A sequence model (rank 5) is probed with two frames per sequence.
        item = (3, h, w) if self.info.rank == 4 else (PROBE_FRAMES, 3, h, w)
        try:
            out = self.infer(np.zeros((n, *item), dtype=np.float32))
        except InferenceFailed as exc:
            if self.fixed_batch is None:
                # Declared dynamic but baked to one batch size (a legacy export):
                # fall back to batch 1 if that runs, as the original project's file does.
                try:
                    out = self.infer(np.zeros((1, *item), dtype=np.float32))
                except InferenceFailed:
                    raise ModelRejected(f"{self.info.path}: the model fails on a test batch: {exc}") from None
                self.fixed_batch = 1
                return
            raise ModelRejected(f"{self.info.path}: the model fails on a test batch: {exc}") from None
        if out.shape != (n, 2) or not np.all(np.isfinite(out)):
            raise ModelRejected(
                f"{self.info.path}: a test batch of {n} gave output of shape {out.shape}, expected ({n}, 2) "
                f"finite logits. {reexport_hint(self.info)}"
            )

    def infer(self, batch: np.ndarray) -> np.ndarray:
        try:
            (out,) = self._session.run([self._output], {self._input: np.ascontiguousarray(batch, dtype=np.float32)})
        except Exception as exc:
            raise InferenceFailed(first_line(exc, 300)) from None
        return out

    def close(self) -> None:
        self._session = None
