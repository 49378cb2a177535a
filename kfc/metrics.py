"""KFC's Prometheus metrics, on a registry of its own (several instances may share a process)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from embark.queue.base import Delivery
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
        self.step_seconds = Histogram(
            "kfc_step_seconds",
            "Time a polled batch spends in each step (store_read, encode, store_write,"
            " dead_letter, commit): with the queue lag, where a miss's time goes.",
            ["step"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.queue_lag = Histogram(
            "kfc_queue_lag_seconds",
            "Age of the oldest job of each polled batch when KFC received it (enqueue to poll):"
            " how far behind the queue the consumer runs.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.encode_batch_size = Histogram(
            "kfc_encode_batch_size",
            "Inputs per Retina Embed call.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.transient_errors = Counter(
            "kfc_transient_errors",
            "Batches retried after a transient failure, by the step that failed (cause:"
            " store_read, encode, store_write, dead_letter, commit).",
            ["cause"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "kfc_dead_letters",
            "Jobs dead-lettered, by reason (http_404, not_an_image, too_large, timeout,"
            " revision_retired, rejected_by_retina, bad_response, ...).",
            ["reason"],
            registry=self.registry,
        )

        self.item_retries = Counter(
            "kfc_item_retries",
            "Items handed to a per-item retry after a fault that may pass, by reason (http_503,"
            " connection_failed, encoder_failed, ...).",
            ["reason"],
            registry=self.registry,
        )
        self.retrying = Gauge(
            "kfc_items_retrying",
            "Items in per-item retry now (their offsets are not committed yet).",
            registry=self.registry,
        )

    def observe_poll(self, deliveries: Sequence[Delivery]) -> None:
        """Queue lag from the jobs' own enqueue time: no broker round trip needed."""
        oldest = min((d.job.enqueued_at_ms for d in deliveries if d.job.enqueued_at_ms), default=0)
        if oldest:
            self.queue_lag.observe(max(0.0, time.time() - oldest / 1000))

    def observe(self, outcome: BatchOutcome) -> None:
        self.batch_size.observe(outcome.polled)
        self.jobs.labels("stored").inc(outcome.stored)
        self.jobs.labels("skipped").inc(outcome.skipped)
        self.jobs.labels("failed").inc(outcome.failed)
