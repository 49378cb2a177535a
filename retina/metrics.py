"""Retina's Prometheus metrics, on a registry of their own (several instances may share a process:
`embark dev`, tests). ``retina serve`` exposes them on ``RETINA_METRICS_PORT`` when it is set."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class RetinaMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.batch_size = Histogram(
            "retina_batch_size",
            "Inputs per Embed call, by model.",
            ["model"],
            buckets=_SIZES,
            registry=self.registry,
        )
        self.embed_seconds = Histogram(
            "retina_embed_seconds",
            "Embed call latency (fetch, preprocess, wait for the inference slot, infer), by model.",
            ["model"],
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.infer_seconds = Histogram(
            "retina_infer_seconds",
            "Encoder inference latency per call (the model's forward passes only), by model.",
            ["model"],
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.items = Counter(
            "retina_items",
            "Inputs answered, by model and outcome (vector, error).",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.item_failures = Counter(
            "retina_item_failures",
            "Inputs answered with an ItemError, by model and reason (http_404, not_an_image,"
            " too_large, too_many_pixels, blocked_address, bad_scheme, timeout, empty_input, ...).",
            ["model", "reason"],
            registry=self.registry,
        )
