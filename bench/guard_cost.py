"""What wrapping every method costs a hit: EmbArk's guard (errors, metrics, token) applied at
registration, as EmbArk serves, against the same guard run through a grpc.aio interceptor, as
it served before, and against no guard at all, in one run.

Three ``bench/floor_server.py`` processes (grpc.aio on uvloop answering one prebuilt hit) differ
only in ``--guard``. ghz drives each with ``--concurrency`` GetEmbedding calls in flight; rounds
alternate the order. What is compared is the server's CPU a call (process CPU over calls
answered), which does not depend on the share of the box each server got, over ghz's CPU a
call (``bench.ghz.server_over_ghz``), which cancels the swings of a shared host's speed from
round to round. No Cassandra, no Kafka; a few minutes.

    .venv/bin/python -m bench.guard_cost [--rounds 8]

Writes bench/results/guard_cost.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.ghz import alternating_rounds, server_over_ghz
from bench.stack import Proc, free_port, machine, table, write_result

GUARDS = ("none", "registration", "interceptor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "runs": []}
    ask = [{"model": "minilm-l6", "input": {"text": "red running shoes, size 42"}}]
    logs = Path(tempfile.mkdtemp(prefix="guard-cost-"))
    procs: dict[str, Proc] = {}
    try:
        for guard in GUARDS:
            port = free_port()
            argv = ["bench.floor_server", "--port", str(port), "--guard", guard]
            procs[guard] = Proc(guard, argv, {}, port, logs / f"{guard}.log").start()
        targets = {g: (f"127.0.0.1:{p.health_port}", [p.pid]) for g, p in procs.items()}
        result["runs"] = alternating_rounds(
            targets,
            "GetEmbedding",
            ask,
            rounds=args.rounds,
            label="guard",
            concurrency=args.concurrency,
            seconds=args.seconds,
        )
    finally:
        for proc in procs.values():
            proc.stop()
    result["summary"] = summarise(result["runs"])
    print(report(result))
    print(f"\nwrote {write_result('guard_cost', result)}")


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per guard: the median server CPU a call over rounds, and its ratio to no guard."""
    out: dict[str, Any] = {}
    for guard in GUARDS:
        mine = [r["loaded"] for r in runs if r["guard"] == guard]
        out[guard] = {
            "server_cpu_us_per_call": statistics.median(
                1e6 / r["calls_per_server_cpu_s"] for r in mine
            ),
            "server_cpu_per_ghz_cpu": statistics.median(server_over_ghz(r) for r in mine),
            "rps": statistics.median(r["rps"] for r in mine),
            "errors": sum(r["errors"] for r in mine),
        }
    bare = out["none"]["server_cpu_per_ghz_cpu"]
    for guard in GUARDS:
        x = out[guard]["server_cpu_per_ghz_cpu"] / bare
        out[guard]["x_bare"] = x
        # The ratio applied to the bare server's median CPU a call: what the guard adds.
        out[guard]["extra_us_per_call"] = (x - 1) * out["none"]["server_cpu_us_per_call"]
    return out


def report(result: dict[str, Any]) -> str:
    s = result["summary"]
    rows = [
        [
            guard,
            s[guard]["server_cpu_per_ghz_cpu"],
            s[guard]["x_bare"],
            s[guard]["extra_us_per_call"],
            s[guard]["server_cpu_us_per_call"],
            s[guard]["rps"],
        ]
        for guard in GUARDS
    ]
    headers = [
        "guard",
        "server CPU / ghz CPU",
        "x no guard",
        "us a call over no guard",
        "server CPU us/call",
        "calls/s",
    ]
    return table(headers, rows)


if __name__ == "__main__":
    main()
