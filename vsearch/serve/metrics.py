"""Prometheus metrics of the service (one registry per app, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Search latency buckets: a loopback search is ~1-50 ms; the tail matters up to seconds.
BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)

# Photos (and requests) per model call: 1 alone, up to --batch-photos under load.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "vsearch_serve_requests", "HTTP requests", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "vsearch_serve_request_seconds",
            "request latency",
            ["endpoint"],
            buckets=BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "vsearch_serve_errors",
            "requests answered with an error",
            ["endpoint", "code"],
            registry=r,
        )
        self.index = Gauge(
            "vsearch_serve_index_info",
            "the index in service (value 1)",
            ["build_id", "model_version"],
            registry=r,
        )
        self.swaps = Counter("vsearch_serve_index_swaps", "indexes swapped in", registry=r)
        self.refused = Counter(
            "vsearch_serve_index_refused", "new indexes refused (failed to load)", registry=r
        )
        self.fallbacks = Counter(
            "vsearch_serve_filter_exact_fallbacks",
            "filtered queries answered by exact search over the filtered subset",
            registry=r,
        )
        self.batch_photos = Histogram(
            "vsearch_serve_batch_size",
            "photos per model call (concurrent requests batched together)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "vsearch_serve_batch_requests",
            "requests per model call",
            buckets=BATCH_BUCKETS,
            registry=r,
        )

    def serving(self, build_id: str, model_version: str) -> None:
        self.index.clear()
        self.index.labels(build_id, model_version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
