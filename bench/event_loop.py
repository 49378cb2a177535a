"""`embark serve` on uvloop against asyncio's own loop (``EMBARK_EVENT_LOOP``), in one run.

Two single-process servers on the same archive, each with its LRU warmed until it holds the
keys, answer the same GetEmbedding hits from ghz: one call in flight (latency) and
``--concurrency`` in flight (calls/s, and calls per server CPU-second, which does not depend
on what share of the box the server got). Rounds alternate which loop goes first.

    .venv/bin/python -m bench.event_loop [--rounds 3]

Writes bench/results/event_loop.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
from typing import Any

from bench.ghz import ghz, server_over_ghz
from bench.hotpath import single, warm_until_held
from bench.inputs import titles
from bench.stack import Proc, machine, seed, stack, table, write_result

LOOPS = ("asyncio", "uvloop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-calls", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    random.seed(7)
    texts = titles(args.keys, prefix="event loop")
    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "runs": []}
    with stack("event_loop") as s:
        asyncio.run(seed(s.cassandra_config(), texts))
        procs = {name: s.start_embark(f"embark-{name}", EMBARK_EVENT_LOOP=name) for name in LOOPS}
        for proc in procs.values():
            warm_until_held(proc, f"127.0.0.1:{proc.health_port}", texts, 1)
        asks = [single(t) for t in random.sample(texts, min(3000, len(texts)))]
        for n in range(args.rounds):
            for name in LOOPS if n % 2 == 0 else LOOPS[::-1]:
                print(f"round {n + 1}: {name}", flush=True)
                latency, loaded = hit_runs(procs[name], asks, args)
                result["runs"].append(
                    {"loop": name, "round": n + 1, "latency": latency, "loaded": loaded}
                )
    result["summary"] = summarise(result["runs"])
    print(report(result))
    print(f"\nwrote {write_result('event_loop', result)}")


def hit_runs(proc: Proc, asks: list[dict[str, Any]], args: argparse.Namespace) -> tuple[Any, Any]:
    """GetEmbedding ``asks`` against ``proc`` from ghz: ``args.latency_calls`` calls one at a
    time, then ``args.concurrency`` in flight for ``args.seconds`` with the server's CPU."""
    target = f"127.0.0.1:{proc.health_port}"
    latency = ghz(target, "GetEmbedding", asks, concurrency=1, total=args.latency_calls)
    loaded = ghz(
        target,
        "GetEmbedding",
        asks,
        concurrency=args.concurrency,
        connections=4,
        seconds=args.seconds,
        pids=[proc.pid],
    )
    return latency, loaded


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds per loop, and uvloop's ratios to asyncio."""

    def median(name: str, part: str, key: str) -> float:
        return statistics.median(r[part][key] for r in runs if r["loop"] == name)

    out: dict[str, Any] = {
        name: {
            "p50_ms": median(name, "latency", "p50_ms"),
            "p99_ms": median(name, "latency", "p99_ms"),
            "rps": median(name, "loaded", "rps"),
            "calls_per_server_cpu_s": median(name, "loaded", "calls_per_server_cpu_s"),
            "errors": sum(r["loaded"]["errors"] + r["latency"]["errors"] for r in runs),
        }
        for name in LOOPS
    }
    out["uvloop_vs_asyncio"] = {
        key: out["uvloop"][key] / out["asyncio"][key]
        for key in ("p50_ms", "rps", "calls_per_server_cpu_s")
    }
    return out


def report(r: dict[str, Any]) -> str:
    rows = [
        [x["loop"], x["round"], x["latency"]["p50_ms"], x["latency"]["p99_ms"], x["loaded"]["rps"],
         x["loaded"]["calls_per_server_cpu_s"], server_over_ghz(x["loaded"]),
         x["latency"]["errors"] + x["loaded"]["errors"]]
        for x in r["runs"]
    ]  # fmt: skip
    ratio = r["summary"]["uvloop_vs_asyncio"]
    runs = table(
        ["loop", "round", "p50 ms (1 in flight)", "p99 ms", "calls/s (64 in flight)",
         "calls per server CPU-s", "server CPU / ghz CPU", "errors"],
        rows,
    )  # fmt: skip
    # The server's CPU a call read over ghz's, round by round (bench.ghz.server_over_ghz: it
    # cancels the VM's speed swings), computed from the committed runs.
    ratios: dict[str, list[float]] = {"asyncio": [], "uvloop": []}
    for x in r["runs"]:
        ratios[x["loop"]].append(server_over_ghz(x["loaded"]))
    per_loop = {loop: statistics.median(values) for loop, values in ratios.items()}
    return (
        f"{runs}\n\nuvloop / asyncio, medians of the rounds: p50 x{ratio['p50_ms']:.2f},"
        f" calls/s x{ratio['rps']:.2f}, calls per server CPU-second"
        f" x{ratio['calls_per_server_cpu_s']:.2f}; server CPU a call over ghz's"
        f" x{per_loop['uvloop'] / per_loop['asyncio']:.2f}."
    )


if __name__ == "__main__":
    main()
