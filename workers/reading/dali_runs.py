"""Running a DALI pipeline on a batch whose samples may fail it: the one way dfscan's DALI stages do it.

One undecodable sample fails DALI's whole batch and leaves the pipeline
unusable (NVIDIA/DALI#3913, #2380: skipping is not supported).  So a failed
run drops the pipeline (the next run builds a new one) and the batch is
bisected down to the samples that fail it, each of which the caller hands to
its fallback.  A pipeline that can't be built at all is the decoder's failure
(:class:`DecoderUnavailable`), never a sample's: it is raised, not bisected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from dfscan.core.errors import first_line
from dfscan.workers.reading.errors import DecoderUnavailable

__all__ = ["DALI_FAILURES", "build_or_unavailable", "run_locating"]

T = TypeVar("T")
# DALI raises these for a sample it can't decode ("Critical error in pipeline").
DALI_FAILURES = (RuntimeError, ValueError, IndexError)


def build_or_unavailable(build: Callable[[], T], what: str) -> T:
    """``build()``, or :class:`DecoderUnavailable` naming ``what`` with DALI's first line of complaint."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - DALI raises RuntimeError and friends for setup problems
        raise DecoderUnavailable(f"the DALI {what} can't be built: {first_line(exc)}") from None


def run_locating(run: Callable[[Sequence[Any]], list], samples: Sequence[Any],
                 dropped: Callable[[], None]) -> list:
    """``run(samples)``'s outputs, with ``None`` for each sample that fails the batch, found by bisection.

    ``dropped`` is called after each failed run: it forgets the pipeline (and counts the failure).
    """
    try:
        return run(samples)
    except DecoderUnavailable:
        raise
    except DALI_FAILURES:
        dropped()
    if len(samples) == 1:
        return [None]
    mid = len(samples) // 2
    return run_locating(run, samples[:mid], dropped) + run_locating(run, samples[mid:], dropped)
