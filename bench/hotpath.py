"""Benchmarks (a) and (b): EmbArk's hit path through gRPC against encoding every request.

(a) GetEmbedding: latency (one call in flight) and throughput (``--concurrency`` in flight) for
    - hot:     `embark serve` with its LRU warmed (the steady state for repeated inputs),
    - cold:    `embark serve` with EMBARK_CACHE_BYTES=0, so every call reads Cassandra,
    - compute: bench/compute_server.py, which runs the same MiniLM-L6 encoder on every call.
(b) BatchGetEmbeddings vectors/s, hot and cold (and the compute endpoint, for scale).

Everything runs on this machine against real Cassandra and Kafka (devstack); the client runs in
this process and shares the cores with the servers, as a co-located caller would.

    make bench-hotpath            # or: .venv/bin/python -m bench.hotpath [--seconds 8]

Prints the tables with ratios; writes bench/results/hotpath.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any

import grpc

from bench.inputs import titles
from bench.stack import (
    TEXT_MODEL,
    cpu_seconds,
    machine,
    percentiles,
    seed,
    stack,
    table,
    write_result,
)
from embark_api.v1 import embark_pb2, embark_pb2_grpc, inputs_pb2

TARGETS = {"hit_vs_compute_throughput": 20.0, "hot_p50_ms": 1.0, "hot_p99_ms": 5.0}


def _single(text: str) -> embark_pb2.GetEmbeddingRequest:
    return embark_pb2.GetEmbeddingRequest(model=TEXT_MODEL, input=inputs_pb2.Input(text=text))


async def latency(target: str, texts: Sequence[str], calls: int) -> dict[str, float]:
    """One call in flight at a time: the latency a caller sees, free of queueing."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = embark_pb2_grpc.EmbArkStub(channel)
        requests = [_single(random.choice(texts)) for _ in range(calls)]
        for request in requests[:20]:  # connection set-up, first-call costs
            await stub.GetEmbedding(request, timeout=30)
        samples = []
        statuses: dict[int, int] = {}
        for request in requests:
            started = time.perf_counter()
            reply = await stub.GetEmbedding(request, timeout=30)
            samples.append(time.perf_counter() - started)
            statuses[reply.embedding.status] = statuses.get(reply.embedding.status, 0) + 1
    hit = statuses.get(embark_pb2.HIT, 0) / max(1, sum(statuses.values()))
    return {**percentiles(samples), "calls": len(samples), "hit_fraction": hit}


async def throughput(
    target: str,
    texts: Sequence[str],
    seconds: float,
    concurrency: int,
    server_pid: int,
    channels: int = 4,
) -> dict[str, float]:
    """``concurrency`` callers in a closed loop for ``seconds``: completed calls per second."""
    chans = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    stubs = [embark_pb2_grpc.EmbArkStub(c) for c in chans]
    requests = [_single(t) for t in random.sample(list(texts), min(len(texts), 5000))]
    done = 0
    errors = 0
    samples: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def caller(i: int) -> None:
        nonlocal done, errors
        stub = stubs[i % len(stubs)]
        k = i
        while time.perf_counter() < stop_at:
            request = requests[k % len(requests)]
            k += concurrency
            started = time.perf_counter()
            try:
                await stub.GetEmbedding(request, timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            samples.append(time.perf_counter() - started)
            done += 1

    started, cpu_before = time.perf_counter(), cpu_seconds(server_pid)
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(server_pid) - cpu_before
    for c in chans:
        await c.close(None)
    return {
        "rps": done / elapsed,
        "server_cpu_s": cpu,
        # Calls per CPU-second of the serving process: its cost per call, independent of how
        # many cores the client and the neighbours took from it during the run.
        "calls_per_server_cpu_s": done / cpu if cpu else float("nan"),
        "calls": done,
        "errors": errors,
        "concurrency": concurrency,
        **{f"loaded_{k}": v for k, v in percentiles(samples).items()},
    }


async def batch_throughput(
    target: str, texts: Sequence[str], batch: int, seconds: float, concurrency: int = 2
) -> dict[str, float]:
    """BatchGetEmbeddings of ``batch`` inputs, ``concurrency`` calls in flight: vectors/s."""
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    ) as channel:
        stub = embark_pb2_grpc.EmbArkStub(channel)
        shuffled = list(texts)
        random.shuffle(shuffled)
        requests = [
            embark_pb2.BatchGetEmbeddingsRequest(
                model=TEXT_MODEL,
                inputs=[inputs_pb2.Input(text=t) for t in shuffled[i : i + batch]],
            )
            for i in range(0, len(shuffled) - batch + 1, batch)
        ]
        await stub.BatchGetEmbeddings(requests[0], timeout=120)
        vectors = hits = calls = 0
        samples: list[float] = []
        stop_at = time.perf_counter() + seconds

        async def caller(i: int) -> None:
            nonlocal vectors, hits, calls
            k = i
            while time.perf_counter() < stop_at or calls == 0:
                request = requests[k % len(requests)]
                k += concurrency
                t0 = time.perf_counter()
                reply = await stub.BatchGetEmbeddings(request, timeout=300)
                samples.append(time.perf_counter() - t0)
                calls += 1
                vectors += len(reply.embeddings)
                hits += sum(1 for e in reply.embeddings if e.status == embark_pb2.HIT)

        started = time.perf_counter()
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "vectors_per_s": vectors / elapsed,
        "calls": calls,
        "batch": batch,
        "hit_fraction": hits / max(1, vectors),
        **{f"call_{k}": v for k, v in percentiles(samples).items()},
    }


async def warm(target: str, texts: Sequence[str], batch: int) -> None:
    """Ask for every key once, so the LRU holds the whole hot set."""
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    ) as channel:
        stub = embark_pb2_grpc.EmbArkStub(channel)
        for i in range(0, len(texts), batch):
            inputs = [inputs_pb2.Input(text=t) for t in texts[i : i + batch]]
            await stub.BatchGetEmbeddings(
                embark_pb2.BatchGetEmbeddingsRequest(model=TEXT_MODEL, inputs=inputs), timeout=120
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=20_000, help="seeded hot-set size")
    parser.add_argument("--seconds", type=float, default=8.0, help="per throughput run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-calls", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args()
    random.seed(7)
    texts = titles(args.keys, prefix="hotpath")
    result: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    with stack("hotpath") as s:
        print(f"seeding {len(texts)} vectors into {s.keyspace} ...", flush=True)
        asyncio.run(seed(s.cassandra_config(), texts))
        hot = s.start_embark("embark-hot")
        cold = s.start_embark("embark-cold", cache_bytes=0)
        compute = s.start_compute()
        hot_t, cold_t = f"127.0.0.1:{hot.health_port}", f"127.0.0.1:{cold.health_port}"
        compute_t = f"127.0.0.1:{compute.health_port}"

        async def measure() -> None:
            print("warming the LRU ...", flush=True)
            await warm(hot_t, texts, args.batch)
            a: dict[str, Any] = {}
            for name, target, calls in (
                ("hot", hot_t, args.latency_calls),
                ("cold", cold_t, args.latency_calls),
                ("compute", compute_t, max(100, args.latency_calls // 10)),
            ):
                print(f"(a) latency {name} ...", flush=True)
                a[name] = {"latency": await latency(target, texts, calls)}
            for name, target, conc, pid in (
                ("hot", hot_t, args.concurrency, hot.pid),
                ("cold", cold_t, args.concurrency, cold.pid),
                ("compute", compute_t, 16, compute.pid),
            ):
                print(f"(a) throughput {name} ...", flush=True)
                a[name]["throughput"] = await throughput(target, texts, args.seconds, conc, pid)
            b: dict[str, Any] = {}
            for name, target in (("hot", hot_t), ("cold", cold_t)):
                print(f"(b) batch {name} ...", flush=True)
                b[name] = await batch_throughput(target, texts, args.batch, args.seconds)
            print("(b) batch compute ...", flush=True)
            b["compute"] = await batch_throughput(compute_t, texts, 256, 1.0, concurrency=1)
            result["a"], result["b"] = a, b

        asyncio.run(measure())
        result["embark_hot_metrics"] = {
            k: v
            for k, v in hot.metrics().items()
            if k.startswith(("embark_cache", "embark_hit_ratio", "embark_lookups_coalesced"))
        }
    report(result)
    print(f"\nwrote {write_result('hotpath', result)}")


def report(result: dict[str, Any]) -> None:
    a, b = result["a"], result["b"]
    compute_rps = a["compute"]["throughput"]["rps"]
    compute_eff = a["compute"]["throughput"]["calls_per_server_cpu_s"]
    rows = []
    for name in ("hot", "cold", "compute"):
        lat, thr = a[name]["latency"], a[name]["throughput"]
        rows.append(
            [
                name,
                lat["p50_ms"],
                lat["p99_ms"],
                thr["rps"],
                thr["rps"] / compute_rps,
                thr["calls_per_server_cpu_s"],
                thr["calls_per_server_cpu_s"] / compute_eff,
                thr["concurrency"],
                thr["loaded_p50_ms"],
                thr["loaded_p99_ms"],
                thr["errors"],
            ]
        )
    print("\n(a) GetEmbedding through gRPC")
    print(
        table(
            [
                "path",
                "p50 ms (1 in flight)",
                "p99 ms",
                "calls/s",
                "x compute",
                "calls per server CPU-s",
                "x compute (per CPU-s)",
                "in flight",
                "p50 ms loaded",
                "p99 ms loaded",
                "errors",
            ],
            rows,
        )
    )
    ratio = a["hot"]["throughput"]["rps"] / compute_rps
    hot = a["hot"]["latency"]
    checks = {
        "hit throughput >= 20x compute": ratio >= TARGETS["hit_vs_compute_throughput"],
        "hot p50 <= 1 ms": hot["p50_ms"] <= TARGETS["hot_p50_ms"],
        "hot p99 <= 5 ms": hot["p99_ms"] <= TARGETS["hot_p99_ms"],
    }
    compute_vps = b["compute"]["vectors_per_s"]
    print("\n(b) BatchGetEmbeddings")
    print(
        table(
            [
                "path",
                "batch",
                "vectors/s",
                "x compute",
                "call p50 ms",
                "call p99 ms",
                "hit fraction",
            ],
            [
                [
                    name,
                    b[name]["batch"],
                    b[name]["vectors_per_s"],
                    b[name]["vectors_per_s"] / compute_vps,
                    b[name]["call_p50_ms"],
                    b[name]["call_p99_ms"],
                    b[name]["hit_fraction"],
                ]
                for name in ("hot", "cold", "compute")
            ],
        )
    )
    checks["batch hot >= 100k vectors/s"] = b["hot"]["vectors_per_s"] >= 100_000
    checks["batch cold >= 10k vectors/s"] = b["cold"]["vectors_per_s"] >= 10_000
    result["checks"] = checks
    print("\ntargets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in checks.items()))


if __name__ == "__main__":
    main()
