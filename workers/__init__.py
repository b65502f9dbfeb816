"""The batch pipeline: read, decode, infer, write.

Names are imported on first use (PEP 562), so that ``import dfscan.workers`` (which
``celery -A dfscan.workers worker`` does in the parent process before the pool forks)
loads neither the model nor a runtime.  ``dfscan.workers.celery`` is the Celery app,
configured from the ``DFSCAN_*`` environment; ``dfscan.workers.app`` is its module.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BatchMaker": "dfscan.workers.batches",
    "PreparedBatch": "dfscan.workers.batches",
    "Verdict": "dfscan.workers.batches",
    "prefetch": "dfscan.workers.batches",
    "score": "dfscan.workers.batches",
    "ScanContext": "dfscan.workers.context",
    "PillowDecoder": "dfscan.workers.decode",
    "Preprocess": "dfscan.workers.decode",
    "decode_one": "dfscan.workers.decode",
    "load_rgb": "dfscan.workers.decode",
    "DECODERS": "dfscan.workers.decoders",
    "create_decoder": "dfscan.workers.decoders",
    "resolve_decoder": "dfscan.workers.decoders",
    "REASONS": "dfscan.workers.errors",
    "ImageError": "dfscan.workers.errors",
    "VideoError": "dfscan.workers.errors",
    "SampledVideo": "dfscan.workers.video",
    "sample_video": "dfscan.workers.video",
    "ChunkResult": "dfscan.workers.pipeline",
    "run_local_scan": "dfscan.workers.pipeline",
    "score_chunk": "dfscan.workers.pipeline",
}

__all__ = sorted([*_LAZY, "celery"])


def __getattr__(name: str) -> Any:
    if name == "celery":
        # Celery's ``-A dfscan.workers`` looks for ``dfscan.workers.app`` (here: the module
        # of that name, so it moves on), then ``dfscan.workers.celery``.
        from dfscan.workers.app import get_app

        return get_app()
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dfscan.workers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
