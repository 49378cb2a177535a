"""Benchmark (c1): the miss path at idle, EmbArk -> Kafka -> KFC -> Retina -> Cassandra.

One new text at a time, asked through `embark serve` (PENDING), then asked again every 2 ms
until it is a HIT: the time from the first answer to the first HIT is what a caller waits for a
new input's real vector. Each miss is split at the moment Cassandra wrote its vector, KFC's own
stage histograms split the part before it further, and one bare Retina call per text (the
encode alone) is measured beside it. The samples are kept in order in the JSON, so a slow first
miss or a single outlier can be told from a tail. (c2), KFC's sustained rate against Retina
alone, is ``bench.kfc_retina``.

    make bench-pipeline           # or: .venv/bin/python -m bench.pipeline [--misses 60]

Prints the tables; writes bench/results/pipeline-idle.json.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import grpc

from bench.inputs import titles
from bench.report import miss_tail
from bench.stack import (
    ARTIFACTS,
    TEXT_MODEL,
    machine,
    percentiles,
    stack,
    write_result,
)
from embark.catalog import Catalog
from embark.keys import canonical_text, derive_key
from embark_api.v1 import (
    embark_pb2,
    embark_pb2_grpc,
    inputs_pb2,
    retina_pb2,
    retina_pb2_grpc,
)

# (histogram, label) per stage: the queue lag, each step of a batch, and the whole.
KFC_STAGES = {
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
    for stage, (name, label) in KFC_STAGES.items():
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
        first_miss_ms: float | None = None
        # One miss more than measured: the first after the start pays what a fresh KFC does
        # once (its group join, its partitions' first offset lookups and fetch: 250-400 ms in
        # the runs that counted it), which is start-up, not idle; it is reported on its own.
        for i, text in enumerate(titles(n + 1, prefix=f"idle {uuid.uuid4().hex[:6]}")):
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
                    break
                if time.perf_counter() - asked > 30:
                    raise TimeoutError(f"{text!r} not stored within 30 s")
                await asyncio.sleep(0.002)
            if i == 0:
                first_miss_ms = round((seen - asked) * 1000, 2)
                await asyncio.sleep(gap_s)
                continue
            samples.append(seen - asked)
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
        "first_miss_after_start_ms": first_miss_ms,
        # In order, so a single outlier can be told from a tail.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--misses", type=int, default=60, help="idle miss -> stored samples")
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    with stack("pipeline") as s:
        s.start_retina()
        retina = f"127.0.0.1:{s.retina_port}"
        embark = f"127.0.0.1:{s.start_embark().health_port}"
        kfc = s.start_kfc()
        print("miss -> stored at idle ...", flush=True)
        written = _WriteTimes(s.cassandra, s.keyspace)
        result["idle"] = {
            "miss_to_stored": asyncio.run(miss_to_stored(embark, args.misses, written)),
            "retina_single_call": asyncio.run(retina_single(retina, args.misses)),
        }
        written.close()
        # KFC's own histograms over the idle run: the distribution of each stage across all
        # misses (bucket upper bounds), which splits "asked -> written" further.
        result["idle"]["kfc_stages"] = kfc_stage_quantiles(kfc.metrics())
    print(miss_tail(result))
    print(f"samples in order (ms): {result['idle']['miss_to_stored']['samples_ms']}")
    print(f"\nwrote {write_result('pipeline-idle', result)}")


if __name__ == "__main__":
    main()
