"""KFC's Prometheus metrics, on a registry of its own (several instances may share a process)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram

if TYPE_CHECKING:
    from kfc.worker import BatchOutcome


class KfcMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.jobs = Counter(
            "kfc_jobs",
            "Jobs handled, by outcome (stored, skipped, failed).",
            ["outcome"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "kfc_batch_size",
            "Jobs per polled batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.encode_seconds = Histogram(
            "kfc_encode_seconds", "Retina Embed call latency.", registry=self.registry
        )
        self.freshness = Histogram(
            "kfc_enqueue_to_stored_seconds",
            "Time from EmbArk's enqueue to the stored vector.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.transient_errors = Counter(
            "kfc_transient_errors",
            "Batches retried after a transient failure.",
            registry=self.registry,
        )

    def observe(self, outcome: BatchOutcome) -> None:
        self.batch_size.observe(outcome.polled)
        self.jobs.labels("stored").inc(outcome.stored)
        self.jobs.labels("skipped").inc(outcome.skipped)
        self.jobs.labels("failed").inc(outcome.failed)
