"""Fault injection inside a real worker, loaded with ``dfscan worker --include tests._faults``.

``$DFSCAN_TEST_FAULTS`` (JSON) says which faults are on:

* ``slow_batch_s``: every batch's inference takes this much longer (a slow
  GPU), so that a test can act while a chunk is half written;
* ``busy_dir``: each pool process writes ``<busy_dir>/<pid>`` holding the
  chunk id it is scoring, and removes it when done;
* ``poison``: reading a path that contains this string SIGKILLs the pool
  process, every time (a file that crashes its decoder);
* ``noop_model``: no file is read and no model runs; every path gets an
  ``ok`` row at once, so that a benchmark measures orchestration alone
  (paths in, rows out: broker, task dispatch, database writes);
* ``flush_rows``: a chunk commits its rows every this many (``workers.scoring.loop.FLUSH_ROWS``)
  instead of all at once with its completion, so that a test can find a chunk
  half written;
* ``hang_after_commit_seq`` + ``marker``: after the chunk with that seq has
  committed, and before its acknowledgement, the pool process writes
  ``marker`` and hangs, once, so that the test can kill the worker there.

Patches are made here, in the Celery parent, before the pool forks.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from celery.signals import task_postrun, task_prerun

FAULTS: dict = json.loads(os.environ.get("DFSCAN_TEST_FAULTS") or "{}")


if FAULTS.get("slow_batch_s"):
    from dfscan.workers.scoring import Stages

    _score = Stages.score
    _delay = float(FAULTS["slow_batch_s"])

    def _slow_score(self, *args, **kwargs):
        time.sleep(_delay)
        return _score(self, *args, **kwargs)

    Stages.score = _slow_score


if FAULTS.get("flush_rows"):
    import dfscan.workers.scoring.loop as _pipeline

    _pipeline.FLUSH_ROWS = int(FAULTS["flush_rows"])


if FAULTS.get("poison"):
    import dfscan.workers.scoring.images as _batches

    _read = _batches.read_head  # every read of a batch starts with the header
    _marker = str(FAULTS["poison"])

    def _poisoned_read(path, *args, **kwargs):
        if _marker in path:
            os.kill(os.getpid(), signal.SIGKILL)
        return _read(path, *args, **kwargs)

    _batches.read_head = _poisoned_read


if FAULTS.get("noop_model"):
    from datetime import datetime, timezone

    from dfscan.db.records import ResultRow
    from dfscan.workers.scoring import Batch, Stages

    def _no_read(self, paths, job=None):
        return Batch.of(paths)

    def _no_model(self, batch, job=None):
        now = datetime.now(timezone.utc)
        batch.result = [ResultRow(p, None, None, "ok", "real", 0.1, 0.9, None, None, now) for p in batch.paths]

    Stages.prepare = _no_read
    Stages.score = _no_model


@task_prerun.connect(weak=False)
def _busy(task_id=None, task=None, kwargs=None, **_):
    busy = FAULTS.get("busy_dir")
    if busy and kwargs and "chunk_id" in kwargs:
        Path(busy, str(os.getpid())).write_text(str(kwargs["chunk_id"]))


@task_postrun.connect(weak=False)
def _after(task_id=None, task=None, kwargs=None, **_):
    busy = FAULTS.get("busy_dir")
    if busy:
        Path(busy, str(os.getpid())).unlink(missing_ok=True)
    seq = FAULTS.get("hang_after_commit_seq")
    marker = FAULTS.get("marker")
    if seq is not None and marker and kwargs and kwargs.get("seq") == seq and not os.path.exists(marker):
        Path(marker).write_text(str(kwargs["chunk_id"]))
        while True:  # committed, not acknowledged: the test kills the worker here
            time.sleep(1)
