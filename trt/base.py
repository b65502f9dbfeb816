"""The interface every inference runtime implements, and helpers they share."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Runtime(Protocol):
    """Runs a batch of normalised NCHW float32 images to (N, 2) logits.

    ``fixed_batch`` is the only batch size the model accepts, or ``None`` for a
    dynamic batch; callers split and pad accordingly (:func:`run_batched`).
    """

    name: str
    version: str
    precision: str
    device: str
    fixed_batch: int | None

    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


def run_batched(runtime: Runtime, batch: np.ndarray) -> np.ndarray:
    """``runtime.infer`` over ``batch``, split and zero-padded to a fixed batch size if needed."""
    fixed = runtime.fixed_batch
    n = batch.shape[0]
    if fixed is None or n == fixed:
        return runtime.infer(batch)
    outs = []
    for start in range(0, n, fixed):
        part = batch[start : start + fixed]
        if part.shape[0] < fixed:
            pad = np.zeros((fixed - part.shape[0], *part.shape[1:]), dtype=part.dtype)
            part = np.concatenate([part, pad])
        outs.append(runtime.infer(part)[: min(fixed, n - start)])
    return np.concatenate(outs)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
