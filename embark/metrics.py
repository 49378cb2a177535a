"""EmbArk's Prometheus metrics. One registry per service instance (not the global default), so
several instances in one process — `embark dev`, tests — never collide.

With several `embark serve` workers (embark/server/workers.py) prometheus_client runs in its
multiprocess mode: each worker's samples go to files in PROMETHEUS_MULTIPROC_DIR and the parent
serves them summed on the one metrics port. Values read at scrape time from inside a worker
(the queue's backlog and delivery failures) cannot be read from the parent, so a worker copies
them into file-backed metrics (``refresh``, every second); the hit ratio is derived by the
parent from the summed answers (``MultiprocessHitRatio``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from embark_api.v1 import embark_pb2

_STATUS_NAMES: dict[int, str] = {int(value): name for name, value in embark_pb2.Status.items()}

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class EmbarkMetrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, *, multiprocess_dir: str | None = None
    ) -> None:
        self.registry = registry or CollectorRegistry()
        # A worker of several (PROMETHEUS_MULTIPROC_DIR): its samples go to files there.
        self.multiprocess = multiprocess_dir is not None
        # What a scrape reads: this registry alone, or every worker's files summed (the HTTP
        # front's /metrics answers the same as the parent's metrics port).
        self.exposition = (
            self.registry if multiprocess_dir is None else multiprocess_registry(multiprocess_dir)
        )
        self._readers: list[Callable[[], None]] = []
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
            "Lookups that failed (reason=unavailable) or timed out (reason=timeout); answered"
            " UNAVAILABLE.",
            ["reason"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "embark_rejected",
            "Calls refused with a gRPC error, by reason (the status code in lower case):"
            " resource_exhausted (too many in flight), deadline_exceeded (the caller had given"
            " up), invalid_argument, not_found, unavailable (starting up).",
            ["reason"],
            registry=self.registry,
        )
        # The in-process LRU in front of the archive (embark/store/cached.py).
        self.cache_hits = Counter(
            "embark_cache_hits", "Keys answered by the in-process LRU.", registry=self.registry
        )
        self.cache_misses = Counter(
            "embark_cache_misses",
            "Keys the LRU did not hold (read from the archive).",
            registry=self.registry,
        )
        self.cache_evictions = Counter(
            "embark_cache_evictions",
            "Vectors evicted from the LRU to stay within its byte bound.",
            registry=self.registry,
        )
        self.cache_bytes = Gauge(
            "embark_cache_bytes",
            "Vector bytes held by the LRU (summed over workers).",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.cache_entries = Gauge(
            "embark_cache_entries",
            "Vectors held by the LRU (summed over workers).",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.lookups_coalesced = Counter(
            "embark_lookups_coalesced",
            "Keys whose archive read was already in flight for another request (shared).",
            registry=self.registry,
        )
        self.misses_buffered = Gauge(
            "embark_misses_buffered",
            "Misses accepted by the job queue and not yet delivered (Kafka: librdkafka's queue).",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        # Per gRPC method and HTTP route: what a latency or error-rate SLO is written on
        # (deploy/prometheus/embark-alerts.yml). The buckets reach 10 s: read-through calls
        # wait for the encoder.
        self.request_seconds = Histogram(
            "embark_request_seconds",
            "Latency of each call, by API (grpc, http) and route (gRPC method or HTTP route).",
            ["api", "route"],
            buckets=(*_LATENCY_BUCKETS, 5.0, 10.0),
            registry=self.registry,
        )
        self.responses = Counter(
            "embark_responses",
            "Calls answered, by API, route and code (the gRPC status name or the HTTP status).",
            ["api", "route", "code"],
            registry=self.registry,
        )
        self.categorize_answers = Counter(
            "embark_categorize_answers",
            "Categorize answers, by head and status (HIT with categories; UNCERTAIN: abstained"
            " below min_probability, with candidates; PENDING, ... without).",
            ["head", "status"],
            registry=self.registry,
        )
        self.categorize_seconds = Histogram(
            "embark_categorize_seconds",
            "Latency of Categorize / BatchCategorize inside EmbArk (lookup + head), by head.",
            ["head"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Bounded cardinality: a head's labels (97 HS chapters for the default head).
        self.categorize_labels = Counter(
            "embark_categorize_labels",
            "The top label of each answer with categories (HIT or UNCERTAIN), by head: the"
            " served label distribution, to watch for drift.",
            ["head", "label"],
            registry=self.registry,
        )
        self.heads_loaded = Gauge(
            "embark_heads_loaded",
            "Categorizer heads serving (refused ones are not counted; see embark_heads_refused).",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.heads_refused = Gauge(
            "embark_heads_refused",
            "Heads found in the heads directory and refused at the last load (logged why).",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.heads_reloads = Counter(
            "embark_heads_reloads",
            "Reloads of the heads directory after start (SIGHUP).",
            registry=self.registry,
        )
        # Per model: [hits, answers] since start, for the embark_hit_ratio gauge. Plain ints,
        # so counting a batch's answers costs one dict update per status, not per answer.
        self._tally: dict[str, list[int]] = {}
        self._answer_children: dict[tuple[str, int], Counter] = {}
        # Every call's latency and code: labels() costs ~4 us a call more than a kept child
        # (a tuple, a lock, a dict; bench/hit_micro.py); the routes and codes are few and fixed.
        self._request_children: dict[tuple[str, str, str], tuple[Histogram, Counter]] = {}
        if not self.multiprocess:
            self.registry.register(_HitRatio(self._tally))

    def count_answers(self, model: str, answers: Sequence[embark_pb2.Embedding]) -> None:
        """Count a request's answers by status (embark_answers) and feed the hit ratio."""
        counts: dict[int, int] = {}
        for answer in answers:
            counts[answer.status] = counts.get(answer.status, 0) + 1
        for status, n in counts.items():
            child = self._answer_children.get((model, status))
            if child is None:
                child = self.answers.labels(model, _STATUS_NAMES.get(status, str(status)))
                self._answer_children[(model, status)] = child
            child.inc(n)
        tally = self._tally.setdefault(model, [0, 0])
        tally[0] += counts.get(embark_pb2.HIT, 0)
        tally[1] += len(answers)

    def observe_request(self, api: str, route: str, code: str, started: float) -> None:
        """One call done: its latency since ``started`` (perf_counter) and its status code."""
        children = self._request_children.get((api, route, code))
        if children is None:
            children = (
                self.request_seconds.labels(api, route),
                self.responses.labels(api, route, code),
            )
            self._request_children[(api, route, code)] = children
        children[0].observe(time.perf_counter() - started)
        children[1].inc()

    def watch_delivery_failures(self, read: Callable[[], int]) -> None:
        """Report jobs the queue accepted and then failed to deliver (Kafka: message timeout or
        purge at close). Beside embark_misses_dropped (refused at enqueue, answered DROPPED),
        this is the only other way a miss is lost; both are counted, neither is silent."""
        if not self.multiprocess:
            self.registry.register(_Reading("embark_queue_delivery_failed", read))
            return
        counter = Counter("embark_queue_delivery_failed", _DELIVERY_HELP, registry=self.registry)
        seen = [0]

        def copy() -> None:
            now = read()
            if now > seen[0]:
                counter.inc(now - seen[0])
                seen[0] = now

        self._readers.append(copy)

    def watch_buffered(self, read: Callable[[], int]) -> None:
        """Report the queue's backlog at scrape time (``JobQueue.buffered``)."""
        self.watch(self.misses_buffered, read)

    def watch(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """``gauge`` reads ``read()`` at scrape time (in a worker: every ``refresh``)."""
        if not self.multiprocess:
            gauge.set_function(read)
            return
        self._readers.append(lambda: gauge.set(read()))

    def refresh(self) -> None:
        """Multiprocess mode: copy the values read from the worker into its metric files (the
        parent's scrape cannot call into a worker). A no-op in a single process."""
        for copy in self._readers:
            copy()


class _HitRatio(Collector):
    """embark_hit_ratio{model}: HIT answers / all answers since start. For a windowed ratio use
    sum by (model) (rate(embark_answers_total{status="HIT"}[5m]))
      / sum by (model) (rate(embark_answers_total[5m]))."""

    def __init__(self, tally: dict[str, list[int]]) -> None:
        self._tally = tally

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "embark_hit_ratio",
            "HIT answers over all answers since start, per model.",
            labels=["model"],
        )
        for model, (hits, total) in list(self._tally.items()):
            family.add_metric([model], hits / total if total else 0.0)
        yield family


def multiprocess_registry(path: str) -> CollectorRegistry:
    """Every worker's samples in ``path`` summed, with the hit ratio derived from them."""
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    collector = MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    registry.register(MultiprocessHitRatio(collector))
    return registry


class MultiprocessHitRatio(Collector):
    """embark_hit_ratio{model} on the parent of several workers: HIT over all answers summed
    over the workers' embark_answers_total (read through the multiprocess collector)."""

    def __init__(self, source: Collector) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        tally: dict[str, list[float]] = {}
        for family in self._source.collect():
            if family.name != "embark_answers":
                continue
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                t = tally.setdefault(sample.labels["model"], [0.0, 0.0])
                t[0] += sample.value if sample.labels["status"] == "HIT" else 0.0
                t[1] += sample.value
        family = GaugeMetricFamily(
            "embark_hit_ratio",
            "HIT answers over all answers since start, per model.",
            labels=["model"],
        )
        for model, (hits, total) in tally.items():
            family.add_metric([model], hits / total if total else 0.0)
        yield family


_DELIVERY_HELP = "Jobs accepted by the queue whose delivery then failed; lost, and counted here."


class _Reading(Collector):
    """A counter whose value lives elsewhere (read at scrape time)."""

    def __init__(self, name: str, read: Callable[[], int]) -> None:
        self._name, self._read = name, read

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, _DELIVERY_HELP, value=self._read())
