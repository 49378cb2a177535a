"""Benchmarks (a) and (b): EmbArk's hit path through gRPC against encoding every request,
driven by ghz (a native load generator, bench/ghz.py) so the client's CPU is not taken from
the server's, and measured: every row says what share of the machine ghz and the server had.

(a) GetEmbedding: latency (one call in flight) and throughput (``--concurrency`` in flight) for
    - hot-1:   `embark serve` as one process, its LRU warm (the steady state for repeated inputs),
    - hot-N:   `embark serve` with EMBARK_WORKERS=N (default: the core count) on one port,
               each worker with its own warm LRU,
    - cold:    one process with EMBARK_CACHE_BYTES=0, so every call reads Cassandra,
    - edge:    the native hit front (edge/, Go) in front of hot-1, its memory warm: hits are
               answered without reaching Python at all,
    - compute: bench/compute_server.py, which runs the same MiniLM-L6 encoder on every call.
(b) BatchGetEmbeddings vectors/s, hot (1 and N workers, and the edge) and cold, and the compute
    endpoint; then the same batches from loadgen (bench/loadgen/), which does not decode the
    answers, so the load generator is not what limits the hot rows.

Everything runs on this machine against real Cassandra and Kafka (devstack).

    make bench-hotpath            # or: .venv/bin/python -m bench.hotpath [--seconds 6]

Prints the tables with ratios; writes bench/results/hotpath.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from bench.ghz import ghz
from bench.inputs import titles
from bench.loadgen import loadgen
from bench.report import paths
from bench.stack import TEXT_MODEL, Proc, machine, seed, stack, write_result
from embark_api.v1 import embark_pb2, embark_pb2_grpc, inputs_pb2

# The goals (issue 16), checked and printed; never asserted.
TARGETS = {
    "hit_vs_compute_throughput": 20.0,
    "hot_p50_ms": 0.5,
    "hot_p99_ms": 2.0,
    "hot_loaded_p99_ms": 20.0,
    "cold_p99_ms": 5.0,
    "batch_hot_vectors_per_s": 250_000,
    "batch_cold_vectors_per_s": 60_000,
}


def single(text: str) -> dict[str, Any]:
    """A GetEmbeddingRequest in protobuf's JSON mapping (what ghz sends)."""
    return {"model": TEXT_MODEL, "input": {"text": text}}


def batches(texts: Sequence[str], size: int) -> list[dict[str, Any]]:
    shuffled = list(texts)
    random.shuffle(shuffled)
    return [
        {"model": TEXT_MODEL, "inputs": [{"text": t} for t in shuffled[i : i + size]]}
        for i in range(0, len(shuffled) - size + 1, size)
    ]


async def warm(target: str, texts: Sequence[str], batch: int, connections: int = 1) -> None:
    """Ask for every key once on each of ``connections`` connections of their own: the kernel
    spreads connections over the workers, so with enough of them every worker's LRU holds
    the whole hot set (checked afterwards through the cache-miss counter)."""

    async def one() -> None:
        async with grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.use_local_subchannel_pool", 1),  # a connection of its own
            ],
        ) as channel:
            stub = embark_pb2_grpc.EmbArkStub(channel)
            for i in range(0, len(texts), batch):
                inputs = [inputs_pb2.Input(text=t) for t in texts[i : i + batch]]
                await stub.BatchGetEmbeddings(
                    embark_pb2.BatchGetEmbeddingsRequest(model=TEXT_MODEL, inputs=inputs),
                    timeout=120,
                )

    for _ in range(connections):
        await one()


def cache_misses(proc: Proc) -> float:
    return sum(v for k, v in proc.metrics().items() if k.startswith("embark_cache_misses_total"))


def forwarded(edge: Proc) -> float:
    """Calls the edge passed on to EmbArk (its misses, for the methods it answers itself)."""
    return sum(
        v
        for k, v in edge.metrics().items()
        if k.startswith("embark_edge_calls_total")
        and 'answered_by="upstream"' in k
        and "GetEmbedding" in k
    )


def warm_until_held(
    proc: Proc,
    target: str,
    texts: Sequence[str],
    connections: int,
    misses: Callable[[Proc], float] = cache_misses,
) -> int:
    """Warm passes until one adds no miss (at most 6): on a starved box a warm batch's
    archive read can time out (the LRU keeps nothing from a read it gave up on), and those
    keys would be measured as cold. Batches of 128 keep each read well inside the lookup
    timeout. ``misses`` is the counter a pass not yet held moves: the LRU's misses, or
    ``forwarded`` for the edge (its first pass is forwarded and remembered; a batch is
    answered from memory only when all of it is held). Returns the passes it took."""
    passes = 0
    for passes in range(1, 7):
        before = misses(proc)
        asyncio.run(warm(target, texts, 128, connections))
        if misses(proc) == before:
            return passes
    return passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=20_000, help="seeded hot-set size")
    parser.add_argument("--seconds", type=float, default=6.0, help="per throughput run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-calls", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ghz-cpus", type=int, default=1, help="GOMAXPROCS of ghz")
    args = parser.parse_args()
    random.seed(7)
    texts = titles(args.keys, prefix="hotpath")
    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "driver": "ghz"}
    with stack("hotpath") as s:
        print(f"seeding {len(texts)} vectors into {s.keyspace} ...", flush=True)
        asyncio.run(seed(s.cassandra_config(), texts))
        hot1 = s.start_embark("embark-hot1")
        hotn = s.start_embark("embark-hotn", EMBARK_WORKERS=str(args.workers))
        cold = s.start_embark("embark-cold", cache_bytes=0)
        compute = s.start_compute()
        edge = s.start_edge(hot1)
        procs = {
            "hot-1": hot1,
            f"hot-{args.workers}": hotn,
            "edge": edge,
            "cold": cold,
            "compute": compute,
        }
        target = {k: f"127.0.0.1:{p.health_port}" for k, p in procs.items()}
        print("warming the LRUs ...", flush=True)
        result["warm_passes"] = {
            "hot-1": warm_until_held(hot1, target["hot-1"], texts, 1),
            f"hot-{args.workers}": warm_until_held(
                hotn, target[f"hot-{args.workers}"], texts, 4 * args.workers
            ),
        }
        # After hot-1: the edge's first pass is answered by hot-1's warm LRU.
        result["warm_passes"]["edge"] = warm_until_held(edge, target["edge"], texts, 1, forwarded)
        misses_before = {k: cache_misses(procs[k]) for k in ("hot-1", f"hot-{args.workers}")}
        edge_forwarded_before = forwarded(edge)
        singles = [single(t) for t in random.sample(texts, min(len(texts), 5000))]
        a: dict[str, Any] = {}
        for name in procs:
            calls = args.latency_calls if name != "compute" else max(100, args.latency_calls // 10)
            print(f"(a) latency {name} ...", flush=True)
            a[name] = {
                "latency": ghz(
                    target[name],
                    "GetEmbedding",
                    singles,
                    concurrency=1,
                    total=calls,
                    cpus=args.ghz_cpus,
                )
            }
        # The edge's server CPU is its own and its upstream's (which should be idle but for the
        # edge's catalog polls): everything that serves its calls.
        pids = {name: [p.pid] for name, p in procs.items()} | {"edge": [edge.pid, hot1.pid]}
        for name in procs:
            conc = args.concurrency if name != "compute" else 16
            print(f"(a) throughput {name} ...", flush=True)
            a[name]["throughput"] = ghz(
                target[name],
                "GetEmbedding",
                singles,
                concurrency=conc,
                # A connection per worker and more: the kernel balances connections, not calls.
                connections=max(4, 2 * args.workers),
                seconds=args.seconds,
                pids=pids[name],
                cpus=args.ghz_cpus,
            )
        b: dict[str, Any] = {}
        lean: dict[str, Any] = {}
        big = batches(texts, args.batch)
        raw = [
            embark_pb2.BatchGetEmbeddingsRequest(
                model=TEXT_MODEL, inputs=[inputs_pb2.Input(text=i["text"]) for i in x["inputs"]]
            ).SerializeToString()
            for x in big
        ]
        drivers: list[tuple[str, Callable[..., dict[str, Any]], Sequence[Any], dict[str, Any]]]
        drivers = [("ghz", ghz, big, b), ("loadgen", loadgen, raw, lean)]
        for label, drive, requests, into in drivers:
            for name in ("hot-1", f"hot-{args.workers}", "edge", "cold"):
                print(f"(b) batch {name}, {label} ...", flush=True)
                into[name] = drive(
                    target[name],
                    "BatchGetEmbeddings",
                    requests,
                    concurrency=2 * args.workers,
                    connections=2 * args.workers,
                    seconds=args.seconds,
                    pids=pids[name],
                    cpus=args.ghz_cpus,
                    timeout_s=120.0,
                )
                into[name]["batch"] = args.batch
                into[name]["vectors_per_s"] = into[name]["rps"] * args.batch
        result["b_loadgen"] = lean
        print("(b) batch compute ...", flush=True)
        b["compute"] = ghz(
            target["compute"],
            "BatchGetEmbeddings",
            batches(texts, 256)[:1],
            concurrency=1,
            total=2,
            pids=[compute.pid],
            cpus=args.ghz_cpus,
            timeout_s=120.0,
        )
        b["compute"]["batch"] = 256
        b["compute"]["vectors_per_s"] = b["compute"]["rps"] * 256
        # Every hot call must have been a hit: the LRUs' miss counters did not move.
        result["hot_cache_misses_during_run"] = {
            k: cache_misses(procs[k]) - v for k, v in misses_before.items()
        }
        # And every edge call was answered from its memory.
        result["edge_forwarded_during_run"] = forwarded(edge) - edge_forwarded_before
        result["a"], result["b"] = a, b
    report(result)
    print(f"\nwrote {write_result('hotpath', result)}")


def report(result: dict[str, Any]) -> None:
    """The tables docs/performance.md shows (``bench.report`` renders both), then the goals."""
    from bench.report import hotpath_a, hotpath_b, hotpath_b_loadgen

    a, b = result["a"], result["b"]
    hot1, hotn = (n for n in paths(a) if n.startswith("hot-"))
    fronts = [n for n in (hot1, hotn, "edge") if n in a]
    compute_rps = a["compute"]["throughput"]["rps"]
    print("\n(a) GetEmbedding through gRPC (driven by ghz)")
    print(hotpath_a(result))
    print(
        f"\n{hotn} / {hot1} calls/s: "
        f"{a[hotn]['throughput']['rps'] / a[hot1]['throughput']['rps']:.2f}x"
    )
    best = max(a[n]["throughput"]["rps"] for n in fronts)
    lat1 = min((a[n]["latency"] for n in fronts), key=lambda x: x["p99_ms"])
    loaded = min(a[n]["throughput"]["p99_ms"] for n in fronts)
    checks = {
        "hit throughput >= 20x compute": best / compute_rps >= TARGETS["hit_vs_compute_throughput"],
        "hot p50 <= 0.5 ms": lat1["p50_ms"] <= TARGETS["hot_p50_ms"],
        "hot p99 <= 2 ms": lat1["p99_ms"] <= TARGETS["hot_p99_ms"],
        "hot p99 at 64 in flight <= 20 ms": loaded <= TARGETS["hot_loaded_p99_ms"],
        "cold p99 <= 5 ms": a["cold"]["latency"]["p99_ms"] <= TARGETS["cold_p99_ms"],
    }
    print("\n(b) BatchGetEmbeddings (driven by ghz)")
    print(hotpath_b(result))
    lean = result.get("b_loadgen", {})
    if lean:
        print("\n(b) BatchGetEmbeddings (driven by loadgen, answers not decoded)")
        print(hotpath_b_loadgen(result))
    hot_vps = max(x[n]["vectors_per_s"] for x in (b, lean) for n in fronts if n in x)
    checks["batch hot >= 250k vectors/s"] = hot_vps >= TARGETS["batch_hot_vectors_per_s"]
    cold_vps = max(x["cold"]["vectors_per_s"] for x in (b, lean) if "cold" in x)
    checks["batch cold >= 60k vectors/s"] = cold_vps >= TARGETS["batch_cold_vectors_per_s"]
    result["checks"] = checks
    print("\ntargets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in checks.items()))
    print(f"hot cache misses during the run: {result.get('hot_cache_misses_during_run')}")
    print(f"edge calls forwarded during the run: {result.get('edge_forwarded_during_run')}")


if __name__ == "__main__":
    main()
