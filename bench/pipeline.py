"""Benchmark (c): the miss path, EmbArk -> Kafka -> KFC -> Retina -> Cassandra.

1. Miss -> stored at idle: one new text at a time, asked through `embark serve` (PENDING), then
   asked again every 2 ms until it is a HIT; the time from the first answer to the first HIT
   is what a caller waits for a new input's real vector. Compared with one bare Retina call
   for the same kind of text (the encode alone).
2. Sustained throughput: ``--jobs`` new texts produced to the jobs topic at once (as a burst of
   misses would), and the time until KFC has stored them all (its kfc_jobs_total{stored}),
   against Retina's raw throughput (Embed calls of KFC's batch size, back to back, same texts'
   shape) measured right before.

    make bench-pipeline           # or: .venv/bin/python -m bench.pipeline [--jobs 2000]

Prints the tables with ratios; writes bench/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import grpc

from bench.inputs import titles
from bench.stack import (
    ARTIFACTS,
    TEXT_MODEL,
    machine,
    percentiles,
    stack,
    table,
    write_result,
)
from embark.catalog import Catalog
from embark.keys import canonical_text, derive_key
from embark.queue.kafka import KafkaConfig, KafkaJobQueue
from embark_api.v1 import (
    embark_pb2,
    embark_pb2_grpc,
    inputs_pb2,
    jobs_pb2,
    retina_pb2,
    retina_pb2_grpc,
)

TARGETS = {"miss_to_stored_p50_ms": 50.0, "kfc_vs_retina": 0.85}


# (histogram, label) per stage: the queue lag, each step of a batch, and the whole.
_KFC_STAGES = {
    "EmbArk enqueue -> KFC poll (produce, Kafka, fetch)": ("kfc_queue_lag_seconds", ""),
    "KFC: skip-stored read": ("kfc_step_seconds", 'step="store_read"'),
    "KFC: Retina Embed call": ("kfc_step_seconds", 'step="encode"'),
    "KFC: Cassandra write": ("kfc_step_seconds", 'step="store_write"'),
    "KFC: Kafka commit": ("kfc_step_seconds", 'step="commit"'),
    "EmbArk enqueue -> stored and committed (KFC's clock)": ("kfc_enqueue_to_stored_seconds", ""),
}


def kfc_stage_quantiles(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """p50/p90/p99 of KFC's stage histograms, as the upper bound of the bucket they fall in
    (what a Prometheus histogram can say), with the count of observations."""
    out: dict[str, dict[str, float]] = {}
    for stage, (name, label) in _KFC_STAGES.items():
        buckets = sorted(
            (float(k.split('le="')[1].split('"')[0]), v)
            for k, v in metrics.items()
            if k.startswith(f"{name}_bucket{{") and (not label or label in k)
        )
        total = metrics.get(f"{name}_count{{{label}}}" if label else f"{name}_count", 0.0)
        if not total:
            continue
        row = {"count": total}
        for q in (50, 90, 99):
            bound = next((le for le, n in buckets if n >= total * q / 100), float("inf"))
            row[f"p{q}_ms_at_most"] = bound * 1000
        out[stage] = row
    return out


class _WriteTimes:
    """When Cassandra stored a key's vector: WRITETIME(vector), the coordinator's clock at the
    write (same host as the caller here), so a miss's time splits exactly into before the
    write (EmbArk's produce, Kafka, KFC, Retina, the write) and after it (until the caller's
    next ask sees the row)."""

    def __init__(self, contact: str, keyspace: str) -> None:
        from cassandra.cluster import Cluster

        host, port = contact.rsplit(":", 1)
        self._cluster = Cluster([host], port=int(port))
        self._session = self._cluster.connect(keyspace)
        self._query = self._session.prepare("SELECT WRITETIME(vector) FROM embeddings WHERE key=?")

    def of(self, key: str) -> float | None:
        row = self._session.execute(self._query, [key], timeout=30).one()
        return None if row is None or row[0] is None else row[0] / 1e6

    def close(self) -> None:
        self._cluster.shutdown()


async def miss_to_stored(
    target: str, n: int, written: _WriteTimes | None = None, gap_s: float = 0.2
) -> dict[str, Any]:
    """``n`` misses one at a time, ``gap_s`` apart; each miss's time from PENDING to the first
    HIT, split at the moment Cassandra wrote the vector (``written``)."""
    spec = Catalog.load(ARTIFACTS / "catalog.json").require(TEXT_MODEL)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = embark_pb2_grpc.EmbArkStub(channel)
        samples: list[float] = []
        to_write: list[float] = []
        after_write: list[float] = []
        unavailable = 0
        for text in titles(n, prefix=f"idle {uuid.uuid4().hex[:6]}"):
            request = embark_pb2.GetEmbeddingRequest(
                model=TEXT_MODEL, input=inputs_pb2.Input(text=text)
            )
            first = await stub.GetEmbedding(request, timeout=10)
            # On a starved box the first lookup can time out (UNAVAILABLE, nothing queued):
            # ask again until the miss is queued (PENDING), and time from there.
            while first.embedding.status == embark_pb2.UNAVAILABLE:
                unavailable += 1
                await asyncio.sleep(0.01)
                first = await stub.GetEmbedding(request, timeout=10)
            asked, asked_wall = time.perf_counter(), time.time()
            if first.embedding.status == embark_pb2.HIT:
                # An UNAVAILABLE answer had queued it after all: its start is unknown.
                continue
            assert first.embedding.status == embark_pb2.PENDING, first.embedding.status
            while True:
                reply = await stub.GetEmbedding(request, timeout=10)
                if reply.embedding.status == embark_pb2.HIT:
                    seen, seen_wall = time.perf_counter(), time.time()
                    samples.append(seen - asked)
                    break
                if time.perf_counter() - asked > 30:
                    raise TimeoutError(f"{text!r} not stored within 30 s")
                await asyncio.sleep(0.002)
            if written is not None:
                key = derive_key(spec.name, spec.revision, "text", canonical_text(text)).digest
                at = written.of(key)
                if at is not None:
                    to_write.append(max(0.0, at - asked_wall))
                    after_write.append(max(0.0, seen_wall - at))
            await asyncio.sleep(gap_s)  # idle between misses: no batching helps
    return {
        **percentiles(samples),
        "misses": len(samples),
        "first_asks_unavailable": unavailable,
        # In order: a slow first miss (the consumer group still joining) shows as samples_ms[0].
        "samples_ms": [round(x * 1000, 2) for x in samples],
        "stages": {
            "asked -> written (produce, Kafka, KFC, Retina, write)": percentiles(to_write),
            "written -> seen (the caller's next ask)": percentiles(after_write),
        }
        if to_write
        else {},
    }


async def retina_single(target: str, n: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = retina_pb2_grpc.RetinaStub(channel)
        samples = []
        for text in titles(n, prefix=f"single {uuid.uuid4().hex[:6]}"):
            started = time.perf_counter()
            await stub.Embed(
                retina_pb2.EmbedRequest(model=TEXT_MODEL, inputs=[inputs_pb2.Input(text=text)]),
                timeout=30,
            )
            samples.append(time.perf_counter() - started)
    return percentiles(samples)


async def retina_raw(target: str, jobs: int, batch: int) -> dict[str, float]:
    """Retina alone: Embed calls of ``batch`` texts, one after another, as KFC makes them."""
    texts = titles(jobs, prefix=f"raw {uuid.uuid4().hex[:6]}")
    async with grpc.aio.insecure_channel(target) as channel:
        stub = retina_pb2_grpc.RetinaStub(channel)
        started = time.perf_counter()
        for i in range(0, len(texts), batch):
            await stub.Embed(
                retina_pb2.EmbedRequest(
                    model=TEXT_MODEL,
                    inputs=[inputs_pb2.Input(text=t) for t in texts[i : i + batch]],
                ),
                timeout=120,
            )
        elapsed = time.perf_counter() - started
    return {"items_per_s": len(texts) / elapsed, "items": len(texts), "seconds": elapsed}


def produce(kafka: KafkaConfig, n: int) -> int:
    """``n`` new jobs, exactly as EmbArk enqueues misses; returns when Kafka has them all."""
    spec = Catalog.load(ARTIFACTS / "catalog.json").require(TEXT_MODEL)
    queue = KafkaJobQueue(kafka)
    try:
        for text in titles(n, prefix=f"burst {uuid.uuid4().hex[:6]}"):
            canonical = canonical_text(text)
            queue.enqueue(
                jobs_pb2.EmbedJob(
                    key=derive_key(spec.name, spec.revision, "text", canonical).digest,
                    model=spec.name,
                    revision=spec.revision,
                    input=inputs_pb2.Input(text=canonical),
                    enqueued_at_ms=int(time.time() * 1000),
                )
            )
        return asyncio.run(queue.flush(60))
    finally:
        asyncio.run(queue.close())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--misses", type=int, default=40, help="idle miss -> stored samples")
    parser.add_argument("--jobs", type=int, default=2000, help="burst size for throughput")
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    with stack("pipeline") as s:
        retina = s.start_retina()
        embark = s.start_embark()
        kfc = s.start_kfc()
        retina_t = f"127.0.0.1:{s.retina_port}"
        encode_batch = 32  # KfcSettings.encode_batch's default, which the KFC here runs with

        print("(c1) miss -> stored at idle ...", flush=True)
        written = _WriteTimes(s.cassandra, s.keyspace)
        result["idle"] = {
            "miss_to_stored": asyncio.run(
                miss_to_stored(f"127.0.0.1:{embark.health_port}", args.misses, written)
            ),
            "retina_single_call": asyncio.run(retina_single(retina_t, args.misses)),
        }
        written.close()
        # KFC's own histograms over the idle run: the distribution of each stage across all
        # misses (bucket upper bounds), which splits "asked -> written" further.
        result["idle"]["kfc_stages"] = kfc_stage_quantiles(kfc.metrics())
        if not args.jobs:  # --jobs 0: the idle miss path only
            report(result)
            print(f"\nwrote {write_result('pipeline-idle', result)}")
            return
        print("(c2) Retina raw throughput ...", flush=True)
        result["retina_raw"] = asyncio.run(retina_raw(retina_t, args.jobs, encode_batch))

        print(f"(c2) KFC draining {args.jobs} jobs ...", flush=True)
        stored_before = kfc.metrics().get('kfc_jobs_total{outcome="stored"}', 0.0)
        kafka = KafkaConfig(
            bootstrap_servers=s.backends("KFC")["KFC_QUEUE__KAFKA__BOOTSTRAP_SERVERS"],
            jobs_topic=s.jobs_topic,
            dead_letter_topic=f"{s.jobs_topic}.dlq",
        )
        started = time.perf_counter()
        left = produce(kafka, args.jobs)
        produced_s = time.perf_counter() - started
        stored = 0.0
        while time.perf_counter() - started < 600:
            stored = kfc.metrics().get('kfc_jobs_total{outcome="stored"}', 0.0) - stored_before
            if stored >= args.jobs:
                break
            time.sleep(0.1)
        elapsed = time.perf_counter() - started
        after = kfc.metrics()
        result["kfc"] = {
            "jobs": args.jobs,
            "stored": stored,
            "unflushed": left,
            "produce_s": produced_s,
            "seconds": elapsed,
            "items_per_s": stored / elapsed,
            "batch_size_mean": after.get("kfc_batch_size_sum", 0.0)
            / max(1.0, after.get("kfc_batch_size_count", 0.0)),
            "encode_batch_mean": after.get("kfc_encode_batch_size_sum", 0.0)
            / max(1.0, after.get("kfc_encode_batch_size_count", 0.0)),
            "freshness_mean_s": after.get("kfc_enqueue_to_stored_seconds_sum", 0.0)
            / max(1.0, after.get("kfc_enqueue_to_stored_seconds_count", 0.0)),
        }
        result["retina_metrics"] = {
            k: v for k, v in retina.metrics().items() if k.startswith("retina_batch_size")
        }
    report(result)
    print(f"\nwrote {write_result('pipeline', result)}")


def report(result: dict[str, Any]) -> None:
    idle = result["idle"]
    m, r = idle["miss_to_stored"], idle["retina_single_call"]
    print("\n(c1) miss -> stored at idle (PENDING answered -> first HIT)")
    print(
        table(
            ["path", "p50 ms", "p90 ms", "p99 ms", "x bare encode (p50)"],
            [
                [
                    "miss -> stored",
                    m["p50_ms"],
                    m["p90_ms"],
                    m["p99_ms"],
                    m["p50_ms"] / r["p50_ms"],
                ],
                ["one Retina Embed call", r["p50_ms"], r["p90_ms"], r["p99_ms"], 1.0],
            ],
        )
    )  # fmt: skip
    if m.get("stages"):
        print("\nwhere a miss's time goes (split at Cassandra's WRITETIME of the vector)")
        print(
            table(
                ["stage", "p50 ms", "p90 ms", "p99 ms", "max ms"],
                [
                    [k, v["p50_ms"], v["p90_ms"], v["p99_ms"], v.get("max_ms", float("nan"))]
                    for k, v in m["stages"].items()
                ],
            )
        )
        print(f"samples in order (ms): {m['samples_ms']}")
    if idle.get("kfc_stages"):
        print("\nKFC's histograms over the run (bucket upper bounds)")
        print(
            table(
                ["stage", "misses", "p50 ms <=", "p90 ms <=", "p99 ms <="],
                [
                    [k, v["count"], v["p50_ms_at_most"], v["p90_ms_at_most"], v["p99_ms_at_most"]]
                    for k, v in idle["kfc_stages"].items()
                ],
            )
        )
    if "kfc" not in result:
        return
    raw, kfc = result["retina_raw"], result["kfc"]
    ratio = kfc["items_per_s"] / raw["items_per_s"]
    print("\n(c2) sustained encode throughput")
    print(
        table(
            ["path", "texts", "seconds", "texts/s", "ratio"],
            [
                ["Retina alone (Embed x 32, back to back)", raw["items"], raw["seconds"],
                 raw["items_per_s"], 1.0],
                ["Kafka -> KFC -> Retina -> Cassandra", kfc["jobs"], kfc["seconds"],
                 kfc["items_per_s"], ratio],
            ],
        )
    )  # fmt: skip
    checks = {
        "miss -> stored p50 <= 50 ms": m["p50_ms"] <= TARGETS["miss_to_stored_p50_ms"],
        "KFC >= 85% of Retina": ratio >= TARGETS["kfc_vs_retina"],
    }
    result["checks"] = checks
    print("\ntargets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in checks.items()))


if __name__ == "__main__":
    main()
