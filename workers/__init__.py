"""The path of an item, one sub-package per concept.

* :mod:`.reading`: bytes in (files, ``s3://`` objects), headers, per-item errors;
* :mod:`.images`: image decoding (Pillow, DALI); :mod:`.video`: frame sampling;
  :mod:`.faces`: face detection and geometry (the media packages, independent of each other);
* :mod:`.scoring`: the stage protocol and its table, the one verdict, the one loop;
* :mod:`.fleet`: Celery (app, tasks, producer, leases, schedule, metrics).

Names are imported on first use (PEP 562), so that ``import dfscan.workers`` (which
``celery -A dfscan.workers worker`` does in the parent process before the pool forks)
loads neither the model nor a runtime.  ``dfscan.workers.celery`` is the Celery app,
configured from the ``DFSCAN_*`` environment; ``dfscan.workers.fleet.app`` is its module.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Batch": "dfscan.workers.scoring",
    "ChunkResult": "dfscan.workers.scoring",
    "Item": "dfscan.workers.scoring",
    "ScanContext": "dfscan.workers.scoring",
    "Stages": "dfscan.workers.scoring",
    "STAGES": "dfscan.workers.scoring",
    "Verdict": "dfscan.workers.scoring",
    "run_local_scan": "dfscan.workers.scoring",
    "score_chunk": "dfscan.workers.scoring",
    "PillowDecoder": "dfscan.workers.images",
    "Preprocess": "dfscan.workers.images",
    "DECODERS": "dfscan.workers.images",
    "create_decoder": "dfscan.workers.images",
    "decode_one": "dfscan.workers.images",
    "load_rgb": "dfscan.workers.images",
    "resolve_decoder": "dfscan.workers.images",
    "REASONS": "dfscan.workers.reading",
    "ImageError": "dfscan.workers.reading",
    "VideoError": "dfscan.workers.reading",
    "SampledVideo": "dfscan.workers.video",
    "sample_video": "dfscan.workers.video",
}

__all__ = sorted([*_LAZY, "celery"])


def __getattr__(name: str) -> Any:
    if name == "celery":
        # Celery's ``-A dfscan.workers`` looks for ``dfscan.workers.app`` (not a name here, so it
        # moves on), then ``dfscan.workers.celery``.
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
