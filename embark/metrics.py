"""EmbArk's Prometheus metrics. One registry per service instance (not the global default), so
several instances in one process — `embark dev`, tests — never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class EmbarkMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.answers = Counter(
            "embark_answers",
            "Embeddings answered, by model and status (HIT, PENDING, FAILED, DROPPED, ...).",
            ["model", "status"],
            registry=self.registry,
        )
        self.lookup_seconds = Histogram(
            "embark_lookup_seconds",
            "Store lookup latency per request batch.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.read_through_seconds = Histogram(
            "embark_read_through_seconds",
            "Encode-through latency of read-through requests (wait_ms > 0).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.misses_enqueued = Counter(
            "embark_misses_enqueued",
            "Misses handed to the job queue.",
            ["model"],
            registry=self.registry,
        )
        self.misses_dropped = Counter(
            "embark_misses_dropped",
            "Misses the job queue could not take (buffer full): counted, reported as DROPPED.",
            ["model"],
            registry=self.registry,
        )
        self.store_errors = Counter(
            "embark_store_errors",
            "Lookups that failed or timed out; answered UNAVAILABLE.",
            registry=self.registry,
        )
