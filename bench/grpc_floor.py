"""How far a GetEmbedding hit is from the floor of a Python gRPC server, and what that floor
allows on this box, in one run.

Two servers on the same loop (uvloop) answer the same requests from ghz:
`embark serve` (one process, LRU warmed until it holds every key) and ``bench/floor_server.py``
(grpc.aio answering one prebuilt hit: no key, no cache, no interceptors). Rounds alternate
which goes first; each measures one call in flight (latency) and ``--concurrency`` in flight
(calls/s, p99, and the CPU the server and ghz spent a call, which do not depend on the share of
the box each got), then BatchGetEmbeddings of ``--batch`` inputs, two in flight (vectors/s and
CPU a vector).

A box of C cores serves at most C / (server CPU + load generator CPU) calls a second. The
result sets that ceiling, for EmbArk and for the floor, beside issue 16's target (20x the
encode-per-request server's calls/s, read from the committed bench/results/hotpath.json) and
the batch target (250k vectors/s), and says whether any grpc.aio front could reach them here.

    .venv/bin/python -m bench.grpc_floor [--rounds 3]

Writes bench/results/grpc_floor.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
from typing import Any

from bench.event_loop import hit_runs
from bench.ghz import ghz, server_over_ghz
from bench.hotpath import batches, single, warm_until_held
from bench.inputs import titles
from bench.stack import RESULTS, machine, seed, stack, table, write_result

SERVERS = ("embark", "floor")
TARGET_X = 20.0
BATCH_TARGET = 250_000.0


def compute_rps() -> tuple[float, str]:
    """The encode-per-request server's calls/s in the committed hot-path run (the 20x base)."""
    path = RESULTS / "hotpath.json"
    doc = json.loads(path.read_text())
    rps = float(doc["a"]["compute"]["throughput"]["rps"])
    return rps, path.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-calls", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args()
    random.seed(7)
    texts = titles(args.keys, prefix="grpc floor")
    base, source = compute_rps()
    result: dict[str, Any] = {
        "machine": machine(),
        "args": vars(args),
        "compute_rps": base,
        "compute_rps_from": source,
        "runs": [],
    }
    with stack("grpc_floor") as s:
        asyncio.run(seed(s.cassandra_config(), texts))
        procs = {"embark": s.start_embark(), "floor": s.start_floor()}
        warm_until_held(procs["embark"], f"127.0.0.1:{procs['embark'].health_port}", texts, 1)
        asks = [single(t) for t in random.sample(texts, min(3000, len(texts)))]
        big = batches(texts, args.batch)
        for n in range(args.rounds):
            for name in SERVERS if n % 2 == 0 else SERVERS[::-1]:
                proc = procs[name]
                print(f"round {n + 1}: {name}", flush=True)
                latency, loaded = hit_runs(proc, asks, args)
                batch = ghz(
                    f"127.0.0.1:{proc.health_port}",
                    "BatchGetEmbeddings",
                    big,
                    concurrency=2,
                    connections=2,
                    seconds=args.seconds,
                    pids=[proc.pid],
                    timeout_s=120.0,
                )
                result["runs"].append(
                    {"server": name, "round": n + 1, "latency": latency, "loaded": loaded,
                     "batch": batch}
                )  # fmt: skip
    result["summary"] = summarise(result["runs"], base, args.batch, os.cpu_count() or 1)
    print(report(result))
    print(f"\nwrote {write_result('grpc_floor', result)}")


def summarise(runs: list[dict[str, Any]], compute: float, batch: int, cores: int) -> dict[str, Any]:
    """Medians over rounds per server; each one's ceiling on ``cores`` cores with and without
    the load generator on them; EmbArk's costs as ratios to the floor's."""

    def median(name: str, part: str, key: str) -> float:
        return statistics.median(r[part][key] for r in runs if r["server"] == name)

    out: dict[str, Any] = {}
    for name in SERVERS:
        server_ms = 1e3 / median(name, "loaded", "calls_per_server_cpu_s")
        ghz_ms = 1e3 / median(name, "loaded", "calls_per_ghz_cpu_s")
        server_us = 1e6 / (median(name, "batch", "calls_per_server_cpu_s") * batch)
        ghz_us = 1e6 / (median(name, "batch", "calls_per_ghz_cpu_s") * batch)
        parts = ("latency", "loaded", "batch")
        out[name] = {
            "p50_ms": median(name, "latency", "p50_ms"),
            "p99_ms": median(name, "latency", "p99_ms"),
            "rps": median(name, "loaded", "rps"),
            "loaded_p99_ms": median(name, "loaded", "p99_ms"),
            "server_cpu_ms_per_call": server_ms,
            "ghz_cpu_ms_per_call": ghz_ms,
            # What the cores could serve if the server and ghz had all of them ...
            "ceiling_rps": cores * 1e3 / (server_ms + ghz_ms),
            # ... and with the load generator on another machine.
            "ceiling_rps_server_alone": cores * 1e3 / server_ms,
            "batch_vectors_per_s": median(name, "batch", "rps") * batch,
            "batch_server_cpu_us_per_vector": server_us,
            "batch_ghz_cpu_us_per_vector": ghz_us,
            "batch_ceiling_vectors_per_s": cores * 1e6 / (server_us + ghz_us),
            "batch_ceiling_server_alone": cores * 1e6 / server_us,
            "errors": sum(r[p]["errors"] for r in runs if r["server"] == name for p in parts),
        }
    target = TARGET_X * compute
    out["target_rps"] = target
    out["embark_vs_floor"] = {
        key: out["embark"][key] / out["floor"][key]
        for key in ("p50_ms", "rps", "server_cpu_ms_per_call")
    }
    out["floor_reaches_target_here"] = out["floor"]["ceiling_rps"] >= target
    out["floor_reaches_target_server_alone"] = out["floor"]["ceiling_rps_server_alone"] >= target
    out["batch_target_vectors_per_s"] = BATCH_TARGET
    out["floor_reaches_batch_target_here"] = (
        out["floor"]["batch_ceiling_vectors_per_s"] >= BATCH_TARGET
    )
    out["floor_reaches_batch_target_server_alone"] = (
        out["floor"]["batch_ceiling_server_alone"] >= BATCH_TARGET
    )
    return out


def report(r: dict[str, Any]) -> str:
    """The per-round table and the ceilings against the 20x target."""
    rows = [
        [x["server"], x["round"], x["latency"]["p50_ms"], x["latency"]["p99_ms"],
         x["loaded"]["rps"], x["loaded"]["p99_ms"], 1e3 / x["loaded"]["calls_per_server_cpu_s"],
         1e3 / x["loaded"]["calls_per_ghz_cpu_s"]]
        for x in r["runs"]
    ]  # fmt: skip
    runs = table(
        ["server", "round", "p50 ms (1 in flight)", "p99 ms", "calls/s (64 in flight)",
         "p99 ms (64 in flight)", "server CPU ms a call", "ghz CPU ms a call"],
        rows,
    )  # fmt: skip
    return f"{runs}\n\n{ceiling_table(r)}\n\n{batch_table(r)}"


def ceiling_table(r: dict[str, Any]) -> str:
    """Medians, and the calls/s each server's costs allow on this box's cores (docs table)."""
    s = r["summary"]
    ratio = s["embark_vs_floor"]
    rows = [
        [name, s[name]["p50_ms"], s[name]["rps"], s[name]["loaded_p99_ms"],
         s[name]["server_cpu_ms_per_call"], s[name]["ghz_cpu_ms_per_call"],
         s[name]["ceiling_rps"], s[name]["ceiling_rps_server_alone"]]
        for name in SERVERS
    ]  # fmt: skip
    body = table(
        ["server (medians)", "p50 ms, 1 in flight", "calls/s, 64 in flight", "p99 ms, 64 in flight",
         "server CPU ms a call", "ghz CPU ms a call", "ceiling calls/s, ghz on the box",
         "ceiling, ghz elsewhere"],
        rows,
    )  # fmt: skip
    over_ghz = {
        name: statistics.median(
            server_over_ghz(x["loaded"]) for x in r["runs"] if x["server"] == name
        )
        for name in SERVERS
    }
    return (
        f"{body}\n\nTarget: {TARGET_X:.0f}x the encode-per-request server's"
        f" {r['compute_rps']:,.0f} calls/s ({r['compute_rps_from']}) = {s['target_rps']:,.0f}"
        f" calls/s. EmbArk / floor: server CPU a call x{ratio['server_cpu_ms_per_call']:.2f}"
        f" (over ghz's CPU a call, which cancels the host's speed and understates a gap:"
        f" x{over_ghz['embark'] / over_ghz['floor']:.2f}), p50 x{ratio['p50_ms']:.2f}."
    )


def batch_table(r: dict[str, Any]) -> str:
    """BatchGetEmbeddings: vectors/s, CPU a vector, and the ceilings against 250k vectors/s."""
    s = r["summary"]
    rows = [
        [name, s[name]["batch_vectors_per_s"], s[name]["batch_server_cpu_us_per_vector"],
         s[name]["batch_ghz_cpu_us_per_vector"], s[name]["batch_ceiling_vectors_per_s"],
         s[name]["batch_ceiling_server_alone"]]
        for name in SERVERS
    ]  # fmt: skip
    body = table(
        [f"server, {r['args']['batch']} inputs a call (medians)", "vectors/s",
         "server CPU us a vector", "ghz CPU us a vector", "ceiling vectors/s, ghz on the box",
         "ceiling, ghz elsewhere"],
        rows,
    )  # fmt: skip
    return f"{body}\n\nTarget: {s['batch_target_vectors_per_s']:,.0f} vectors/s."


if __name__ == "__main__":
    main()
