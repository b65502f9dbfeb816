"""Prometheus metrics of the API: requests by route and status, the batches the batcher forms, queue waits.

A registry of its own, so two applications in one process (tests) never collide.  Every label
comes from a closed set (methods from :data:`METHODS` or ``other``, routes from the route table or
``unmatched``, statuses from the server's own answers): no client can add a series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["METHODS", "ServeMetrics", "method_label"]

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)
_WAIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def method_label(method: str) -> str:
    """The request's method as a label: one of :data:`METHODS`, else ``other``."""
    return method if method in METHODS else "other"


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("dfscan_serve_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("dfscan_serve_request_seconds", "HTTP request time by route", ["route"],
                                 registry=self.registry)
        self.batch_size = Histogram("dfscan_serve_batch_size", "Images per batch the dynamic batcher formed",
                                    buckets=_BATCH_BUCKETS, registry=self.registry)
        self.queue_wait = Histogram("dfscan_serve_queue_wait_seconds",
                                    "Time an image waited in the batcher's queue before its batch ran",
                                    buckets=_WAIT_BUCKETS, registry=self.registry)
        self.uploads_in_flight = Gauge("dfscan_serve_uploads_in_flight",
                                       "/v1/score requests holding an upload slot (dfscan serve --max-uploads)",
                                       registry=self.registry)
        self.images = Counter("dfscan_serve_images", "Uploaded images scored, by status", ["status"],
                              registry=self.registry)

    def batch(self, size: int, waits: list[float]) -> None:
        self.batch_size.observe(size)
        for wait in waits:
            self.queue_wait.observe(wait)

    def render(self) -> bytes:
        return generate_latest(self.registry)
