"""Benchmark (c2): KFC against Retina alone, compared fairly, in one run.

Both sides make Embed calls of KFC's encode batch (32 texts) with the SAME number of calls in
flight, for each ``--concurrency`` (KFC's ``KFC_ENCODE_CONCURRENCY``), so the best setting of
each is found in the same run and compared at equal footing:

- **Retina alone**: ``--jobs`` new texts, ``c`` Embed calls in flight, back to back.
- **KFC**: ``--jobs`` new jobs produced to the topic at once (a burst of misses), KFC started
  with ``KFC_ENCODE_CONCURRENCY=c``; its stored rate is timed from the moment a tenth of the
  burst is stored to the last one, so KFC's start and group join are not counted.

Rounds alternate which side goes first, so a drifting box falls on both. A discarded warm-up
of each side comes first. Every phase records the CPU seconds per text of each process on the
path (Retina, KFC, Cassandra, Kafka): on one box the pipeline's own processes take CPU the
encoder would otherwise have, so the ratio KFC can reach here is about Retina's CPU per text
alone over the path's total CPU per text, and on separate hosts Retina's rate is the ceiling.

    .venv/bin/python -m bench.kfc_retina [--jobs 1000] [--rounds 2] [--concurrency 1 2 4]

Writes bench/results/kfc_retina.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Mapping
from typing import Any

import grpc

from bench.inputs import titles
from bench.stack import (
    ARTIFACTS,
    TEXT_MODEL,
    Proc,
    Stack,
    cpu_seconds,
    listener_pid,
    machine,
    stack,
    table,
    write_result,
)
from embark.catalog import Catalog
from embark.keys import canonical_text, derive_key
from embark.queue.kafka import KafkaConfig, KafkaJobQueue
from embark_api.v1 import inputs_pb2, jobs_pb2, retina_pb2, retina_pb2_grpc

GOAL = 0.90
ENCODE_BATCH = 32  # KfcSettings.encode_batch's default


def jobs_done(kfc: Proc) -> float:
    """Jobs KFC is done with: stored, or skipped because a redelivered job's vector was already
    written (a batch retried after a transient write error finds its rows there)."""
    metrics = kfc.metrics()
    return sum(metrics.get(f'kfc_jobs_total{{outcome="{o}"}}', 0.0) for o in ("stored", "skipped"))


def _cpu(pids: Mapping[str, int | None]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items() if pid is not None}


def _per_text(before: dict[str, float], after: dict[str, float], texts: float) -> dict[str, float]:
    return {name: 1000 * (after[name] - before[name]) / texts for name in before if name in after}


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


def drain(s: Stack, jobs: int, pids: Mapping[str, int | None], **kfc_env: str) -> dict[str, Any]:
    """Start KFC with ``kfc_env``, produce ``jobs`` new jobs, time storing them; stop KFC.
    The rate and the CPU per job (of ``pids`` and KFC) are taken between the moment a tenth of
    the jobs is stored and the last one."""
    kfc = s.start_kfc(**kfc_env)
    everyone = {**pids, "kfc": kfc.pid}
    try:
        kafka = KafkaConfig(
            bootstrap_servers=s.kafka,
            jobs_topic=s.jobs_topic,
            dead_letter_topic=f"{s.jobs_topic}.dlq",
        )
        produce(kafka, jobs)
        started = time.perf_counter()
        stored = 0.0
        first: tuple[float, float, dict[str, float]] | None = None
        while time.perf_counter() - started < 900 and stored < jobs:
            stored = jobs_done(kfc)
            if first is None and stored >= jobs / 10:
                first = (time.perf_counter(), stored, _cpu(everyone))
            time.sleep(0.05)
        if first is None or stored < jobs:
            raise SystemExit(f"KFC stored {stored} of {jobs} jobs in 900 s")
        end = (time.perf_counter(), stored, _cpu(everyone))
    finally:
        kfc.stop()
        s.procs.remove(kfc)
    seconds, counted = end[0] - first[0], end[1] - first[1]
    return {
        "jobs": jobs,
        "window_jobs": counted,
        "window_s": seconds,
        "texts_per_s": counted / seconds,
        "cpu_ms_per_text": _per_text(first[2], end[2], counted),
    }


async def _retina_burst(target: str, jobs: int, concurrency: int) -> float:
    texts = titles(jobs, prefix=f"alone {uuid.uuid4().hex[:6]}")
    calls = [texts[i : i + ENCODE_BATCH] for i in range(0, len(texts), ENCODE_BATCH)]
    in_flight = asyncio.Semaphore(concurrency)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = retina_pb2_grpc.RetinaStub(channel)

        async def call(batch: list[str]) -> None:
            async with in_flight:
                request = retina_pb2.EmbedRequest(
                    model=TEXT_MODEL, inputs=[inputs_pb2.Input(text=t) for t in batch]
                )
                await stub.Embed(request, timeout=120)

        started = time.perf_counter()
        await asyncio.gather(*(call(b) for b in calls))
        return time.perf_counter() - started


def retina_alone(target: str, jobs: int, concurrency: int, retina_pid: int) -> dict[str, Any]:
    before = _cpu({"retina": retina_pid})
    seconds = asyncio.run(_retina_burst(target, jobs, concurrency))
    return {
        "jobs": jobs,
        "seconds": seconds,
        "texts_per_s": jobs / seconds,
        "cpu_ms_per_text": _per_text(before, _cpu({"retina": retina_pid}), jobs),
    }


def summarise(runs: list[dict[str, Any]], concurrency: list[int]) -> dict[str, Any]:
    """Mean rate per side and concurrency, each side's best, and the ratios."""
    by: dict[str, dict[int, float]] = {"retina": {}, "kfc": {}}
    for side in by:
        for c in concurrency:
            rates = [r["texts_per_s"] for r in runs if r["side"] == side and r["concurrency"] == c]
            by[side][c] = statistics.mean(rates)
    best = {side: max(rates, key=lambda c: rates[c]) for side, rates in by.items()}
    return {
        "texts_per_s": {side: {str(c): v for c, v in rates.items()} for side, rates in by.items()},
        "ratio_same_concurrency": {str(c): by["kfc"][c] / by["retina"][c] for c in concurrency},
        "best_concurrency": best,
        "ratio_best_vs_best": by["kfc"][best["kfc"]] / by["retina"][best["retina"]],
        "goal": GOAL,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="texts per burst")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "runs": []}
    with stack("kfc_retina") as s:
        retina = s.start_retina()
        target = f"127.0.0.1:{s.retina_port}"
        pids = {
            "retina": retina.pid,
            "cassandra": listener_pid(s.cassandra),
            "kafka": listener_pid(s.kafka),
        }
        print("warm-up (discarded): Retina alone, then KFC", flush=True)
        result["warmup"] = [
            retina_alone(target, args.jobs // 2, max(args.concurrency), retina.pid),
            drain(s, args.jobs // 2, pids),
        ]
        for n in range(args.rounds):
            sides = ("retina", "kfc") if n % 2 == 0 else ("kfc", "retina")
            for c in args.concurrency:
                for side in sides:
                    print(f"round {n + 1}, {c} in flight: {side}", flush=True)
                    if side == "retina":
                        run = retina_alone(target, args.jobs, c, retina.pid)
                    else:
                        run = drain(s, args.jobs, pids, KFC_ENCODE_CONCURRENCY=str(c))
                    result["runs"].append({"side": side, "concurrency": c, "round": n + 1, **run})
    result["summary"] = summarise(result["runs"], args.concurrency)
    print(report(result))
    print(f"\nwrote {write_result('kfc_retina', result)}")


def report(r: dict[str, Any]) -> str:
    """The runs, then the summary: the table docs/performance.md carries."""
    runs = table(
        ["side", "in flight", "round", "texts/s", "Retina CPU ms/text", "path CPU ms/text"],
        [
            [
                "Retina alone" if x["side"] == "retina" else "Kafka -> KFC -> Retina -> Cassandra",
                x["concurrency"],
                x["round"],
                x["texts_per_s"],
                x["cpu_ms_per_text"].get("retina", float("nan")),
                sum(x["cpu_ms_per_text"].values()),
            ]
            for x in r["runs"]
        ],
    )
    m = r["summary"]
    same = ", ".join(f"{c} in flight {v:.2f}" for c, v in m["ratio_same_concurrency"].items())
    best = m["best_concurrency"]
    return (
        f"{runs}\n\nKFC / Retina alone at the same calls in flight: {same}."
        f"\nBest vs best: KFC at {best['kfc']} in flight / Retina at {best['retina']}:"
        f" **{m['ratio_best_vs_best']:.2f}** (goal >= {m['goal']:.2f})."
    )


if __name__ == "__main__":
    main()
