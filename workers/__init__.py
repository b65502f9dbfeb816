"""The batch pipeline: read, decode, infer, write.

Names are imported on first use (PEP 562), so that ``import dfscan.workers`` (which
``celery -A dfscan.workers worker`` does in the parent process before the pool forks)
loads neither the model nor a runtime.  ``dfscan.workers.celery`` is the Celery app,
configured from the ``DFSCAN_*`` environment; ``dfscan.workers.fleet.app`` is its module.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BatchMaker": "dfscan.workers.scoring.batches",
    "PreparedBatch": "dfscan.workers.scoring.batches",
    "Verdict": "dfscan.workers.scoring.batches",
    "prefetch": "dfscan.workers.scoring.batches",
    "score": "dfscan.workers.scoring.batches",
    "ScanContext": "dfscan.workers.scoring.context",
    "PillowDecoder": "dfscan.workers.images.decode",
    "Preprocess": "dfscan.workers.images.decode",
    "decode_one": "dfscan.workers.images.decode",
    "load_rgb": "dfscan.workers.images.decode",
    "DECODERS": "dfscan.workers.images.decoders",
    "create_decoder": "dfscan.workers.images.decoders",
    "resolve_decoder": "dfscan.workers.images.decoders",
    "REASONS": "dfscan.workers.reading.errors",
    "ImageError": "dfscan.workers.reading.errors",
    "VideoError": "dfscan.workers.reading.errors",
    "SampledVideo": "dfscan.workers.video.sample",
    "sample_video": "dfscan.workers.video.sample",
    "ChunkResult": "dfscan.workers.scoring.loop",
    "run_local_scan": "dfscan.workers.scoring.loop",
    "score_chunk": "dfscan.workers.scoring.loop",
}

__all__ = sorted([*_LAZY, "celery"])


def __getattr__(name: str) -> Any:
    if name == "celery":
        # Celery's ``-A dfscan.workers`` looks for ``dfscan.workers.fleet.app`` (here: the module
        # of that name, so it moves on), then ``dfscan.workers.celery``.
        from dfscan.workers.fleet.app import get_app

        return get_app()
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dfscan.workers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
