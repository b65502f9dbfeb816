"""The batch pipeline: read, decode, infer, write.

Names are imported on first use (PEP 562), so that ``import workers`` (which
``celery -A workers worker`` does in the parent process before the pool forks)
loads neither the model nor a runtime.  ``workers.celery`` is the Celery app,
configured from the ``DFSCAN_*`` environment; ``workers.app`` is its module.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BatchMaker": "workers.batches",
    "PreparedBatch": "workers.batches",
    "Verdict": "workers.batches",
    "prefetch": "workers.batches",
    "score": "workers.batches",
    "ScanContext": "workers.context",
    "PillowDecoder": "workers.decode",
    "Preprocess": "workers.decode",
    "decode_one": "workers.decode",
    "load_rgb": "workers.decode",
    "DECODERS": "workers.decoders",
    "create_decoder": "workers.decoders",
    "resolve_decoder": "workers.decoders",
    "REASONS": "workers.errors",
    "ImageError": "workers.errors",
    "ChunkResult": "workers.pipeline",
    "run_local_scan": "workers.pipeline",
    "score_chunk": "workers.pipeline",
}

__all__ = sorted([*_LAZY, "celery"])


def __getattr__(name: str) -> Any:
    if name == "celery":
        # Celery's ``-A workers`` looks for ``workers.app`` (here: the module
        # of that name, so it moves on), then ``workers.celery``.
        from workers.app import get_app

        return get_app()
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'workers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
