"""The infer stage: every input of every item through the model, in bounded calls, and every path's row.

Inputs of one graph and shape share calls: images and face crops
``batch_size`` at a time, sequences of T frames ``batch_size // T`` at a
time (memory is bounded by frames, whatever T is).  Each call's logits become
decisions through :func:`~dfscan.workers.scoring.verdict.infer`; an item any
of whose inputs failed gets that input's error, the others their payload's
row (:meth:`~dfscan.workers.scoring.items.Batch.rows`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from dfscan.trt.base import Runtime
from dfscan.workers.scoring.items import Batch, Input
from dfscan.workers.scoring.verdict import Decision, Verdict, infer

if TYPE_CHECKING:
    from dfscan.workers.reading import ImageError
    from dfscan.workers.scoring.stages import Job

__all__ = ["InferStage"]


class InferStage:
    name = "infer"
    phase = "score"

    def __init__(self, runtimes: dict[str, Runtime], verdict: Verdict, batch_size: int = 64) -> None:
        self.runtimes = runtimes  # by graph: "image", and "sequence" with a video graph (shared: a wrapper shows)
        self.verdict = verdict  # when no job says otherwise
        self.batch_size = batch_size

    def cost(self, path: str) -> int | None:
        return None

    def run(self, batch: Batch, job: "Job | None" = None) -> None:
        verdict = job.verdict if job is not None else self.verdict
        batch.result = batch.rows(verdict, self.decide(batch, verdict))

    def decide(self, batch: Batch, verdict: Verdict) -> dict[int, "list[Decision | ImageError]"]:
        """Per item to score (by ``id``): one decision per input of its payload, in the payload's order."""
        owners: dict[tuple[str, tuple[int, ...]], list[tuple[int, int, Input]]] = {}
        decided: dict[int, list] = {}
        for item in batch.to_score():
            inputs = item.payload.inputs()  # type: ignore[union-attr]
            decided[id(item)] = [None] * len(inputs)
            for k, inp in enumerate(inputs):
                owners.setdefault((inp.graph, inp.array.shape), []).append((id(item), k, inp))
        for (graph, shape), group in sorted(owners.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            per_call = self.batch_size // shape[0] if graph == "sequence" else self.batch_size
            started = time.perf_counter()
            decisions = infer(self.runtimes[graph], [inp.array for _, _, inp in group], verdict, per_call)
            # The runtime's own seconds (absent where the batch had nothing to infer: the metrics' inference time).
            batch.timings["runtime"] = batch.timings.get("runtime", 0.0) + time.perf_counter() - started
            for (owner, k, _), d in zip(group, decisions):
                decided[owner][k] = d
        return decided

    def record(self) -> dict | None:
        return None

    def close(self) -> None:
        pass  # the runtimes are the context's
