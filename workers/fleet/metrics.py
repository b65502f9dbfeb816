"""Prometheus metrics of a scoring process, and the HTTP endpoint that serves them.

What an operator watches: images scored (by label), errors (by reason), and
per batch the wall time, the read+decode time and the inference time; plus
the depth of the broker queue, read when Prometheus scrapes.

Wiring::

    metrics = WorkerMetrics()                  # once per process
    score_chunk(ctx, chunk, model_id, on_batch=batch_hook(metrics))
    start_metrics_server(9400, metrics=metrics)

The loop times each stage where it runs and hands the timings to the
:func:`batch_hook`; code that times its batches itself calls
:meth:`WorkerMetrics.observe_batch` instead.

Celery's prefork pool scores in child processes: there, the metrics live in
files shared by all of them (prometheus_client's multiprocess mode).  The
worker sets ``PROMETHEUS_MULTIPROC_DIR`` (an empty directory) before
``prometheus_client`` is first imported, serves with
``start_metrics_server(port, multiprocess_dir=...)`` in the parent, and calls
:func:`mark_process_dead` when a child exits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dfscan.workers.reading.errors import REASONS

__all__ = [
    "MetricsServer",
    "WorkerMetrics",
    "batch_hook",
    "mark_process_dead",
    "redis_queue_depth",
    "start_metrics_server",
]

PREFIX = "dfscan"
# Seconds. A batch of 64 takes milliseconds on a GPU and seconds on two CPU cores.
TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LABELS = ("real", "fake")

# A queue-depth source: a number, or ``{queue: depth}``; ``None`` when unknown.
DepthSource = Callable[[], "int | float | Mapping[str, int | float] | None"]


class _QueueDepth(Collector):
    """``dfscan_queue_depth{queue=...}``, read from a callable at scrape time."""

    def __init__(self) -> None:
        self.source: DepthSource | None = None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Chunks waiting in the broker queue, read at scrape time", labels=["queue"]
        )
        source = self.source
        if source is not None:
            try:
                value = source()
            except Exception:  # noqa: BLE001 - a broker outage must not break the scrape
                value = None
            if isinstance(value, Mapping):
                for queue, depth in sorted(value.items()):
                    family.add_metric([str(queue)], float(depth))
            elif value is not None:
                family.add_metric([""], float(value))
        yield family


class WorkerMetrics:
    """The metrics of one process, in their own registry (so tests and workers don't share one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.images = Counter(f"{PREFIX}_images_scored", "Images given a verdict, by label", ["label"], registry=r)
        self.errors = Counter(f"{PREFIX}_image_errors", "Images that ended as error rows, by reason", ["reason"],
                              registry=r)
        self.batches = Counter(f"{PREFIX}_batches", "Batches scored and written", registry=r)
        self.batch_seconds = Histogram(f"{PREFIX}_batch_seconds", "Latency of a batch: from the start of its reading "
                                       "to its rows (committed with the chunk's)", buckets=TIME_BUCKETS, registry=r)
        self.decode_seconds = Histogram(f"{PREFIX}_decode_seconds", "Reading and decoding one batch",
                                        buckets=TIME_BUCKETS, registry=r)
        self.inference_seconds = Histogram(f"{PREFIX}_inference_seconds", "The runtime's time on one batch",
                                           buckets=TIME_BUCKETS, registry=r)
        self.batch_images = Histogram(f"{PREFIX}_batch_images", "Images per batch", buckets=SIZE_BUCKETS, registry=r)
        # Every label value exists from the start, at 0, so that rate() and
        # alerts see a series before the first fake or the first error.
        for label in LABELS:
            self.images.labels(label)
        for reason in REASONS:
            self.errors.labels(reason)
        self._queue = _QueueDepth()
        r.register(self._queue)

    def observe_batch(self, rows: Iterable[Any], decode_s: float | None = None, infer_s: float | None = None,
                      total_s: float | None = None) -> None:
        """Record one batch's rows (``ResultRow``s) and timings; ``None`` means not measured."""
        n = 0
        for row in rows:
            n += 1
            if row.status == "ok":
                self.images.labels(row.label).inc()
            else:
                self.errors.labels(row.error_code or "unknown").inc()
        self.batches.inc()
        self.batch_images.observe(n)
        for histogram, seconds in ((self.decode_seconds, decode_s), (self.inference_seconds, infer_s),
                                   (self.batch_seconds, total_s)):
            if seconds is not None:
                histogram.observe(seconds)

    def set_queue_depth(self, source: DepthSource | None) -> None:
        """Read the queue depth from ``source()`` at each scrape (``None`` to stop)."""
        self._queue.source = source


# --- the loop's timings -----------------------------------------------------------------


def batch_hook(metrics: WorkerMetrics) -> Callable[[list, dict[str, float]], None]:
    """The loop's ``on_batch`` hook that records each batch: its rows, and the seconds the loop timed per stage.

    Read+decode is the ``prepare`` phase (every stage of it, whichever they are), inference the
    runtime's calls in the infer stage (none: nothing to infer), and the
    batch's wall time runs from its first stage to its rows (before their
    commit, which is the chunk's).
    """

    def on_batch(rows: list, timings: dict[str, float]) -> None:
        metrics.observe_batch(rows, decode_s=timings.get("prepare"), infer_s=timings.get("runtime"),
                              total_s=timings.get("total"))

    return on_batch


# --- queue depth ----------------------------------------------------------------------

# kombu's Redis transport keeps a queue in one list per priority step; steps
# other than 0 live under "<queue>\x06\x16<step>".
_KOMBU_PRIORITY_SEP = "\x06\x16"
_KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)


def redis_queue_depth(broker_url: str, queues: Iterable[str]) -> DepthSource:
    """A depth source for ``queues`` on a Redis broker (messages waiting, not the ones being worked on)."""
    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)
    names = list(queues)

    def depth() -> dict[str, int]:
        pipe = client.pipeline(transaction=False)
        for queue in names:
            for step in _KOMBU_PRIORITY_STEPS:
                pipe.llen(queue if step == 0 else f"{queue}{_KOMBU_PRIORITY_SEP}{step}")
        counts = pipe.execute()
        k = len(_KOMBU_PRIORITY_STEPS)
        return {queue: sum(counts[i * k : (i + 1) * k]) for i, queue in enumerate(names)}

    return depth


# --- serving --------------------------------------------------------------------------


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint; ``port`` is the bound one (useful with port 0)."""

    port: int
    address: str
    _server: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(port: int, addr: str = "127.0.0.1", *, metrics: WorkerMetrics | None = None,
                         multiprocess_dir: str | None = None) -> MetricsServer:
    """Serve ``metrics`` on ``http://addr:port/metrics`` from a daemon thread.

    With ``multiprocess_dir`` (the ``PROMETHEUS_MULTIPROC_DIR`` of a prefork
    pool) the endpoint serves the sum over every process that wrote there,
    plus this process's queue-depth gauge.  ``port=0`` picks a free port.
    """
    if multiprocess_dir is not None:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)
        if metrics is not None:
            registry.register(metrics._queue)
    else:
        registry = (metrics or WorkerMetrics()).registry
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return MetricsServer(port=server.server_address[1], address=addr, _server=server, _thread=thread)


def mark_process_dead(pid: int, multiprocess_dir: str) -> None:
    """Forget a dead child's live gauges (Celery's ``worker_process_shutdown``); its counters stay counted."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path=multiprocess_dir)
