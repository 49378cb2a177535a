"""A hot-path change against the code before it, in one run: `embark serve` from a checkout of
``--base`` (a git revision, in a temporary worktree) beside `embark serve` from this tree, on
the same archive, both with their LRU warmed until it holds every key.

ghz drives GetEmbedding hits at ``--concurrency`` in flight (``--batch N``: BatchGetEmbeddings
of N hits, two in flight on two connections); rounds alternate which goes first.
Compared: the server's CPU a call (process CPU over calls answered, which does not depend on
the share of the box each got) and calls/s. On a shared 2-core box the CPU a call swings by
+-25% from round to round with the host's neighbours: the server's CPU over ghz's, call for
call (``bench.ghz.server_over_ghz``: conservative, it understates a difference), cancels the
machine's speed, and is the figure to read, with the count of rounds each side won on it.

    .venv/bin/python -m bench.revisions --base 2c4c9c9 [--rounds 8] [--name guard]

Writes bench/results/revisions-<name>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.ghz import alternating_rounds, server_over_ghz
from bench.hotpath import batches, single, warm_until_held
from bench.inputs import titles
from bench.stack import ROOT, machine, seed, stack, table, write_result

SIDES = ("base", "head")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the git revision to compare against")
    parser.add_argument("--name", default="head", help="names the result file")
    parser.add_argument("--keys", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch", type=int, default=0, help="inputs a BatchGetEmbeddings call")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    random.seed(7)
    texts = titles(args.keys, prefix="revisions")
    head = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    result: dict[str, Any] = {
        "machine": machine(),
        "args": vars(args),
        "base": _git("rev-parse", "--short", args.base),
        "head": head + ("+changes" if dirty else ""),
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="embark-base-") as tmp:
        base_tree = Path(tmp) / "tree"
        _git("worktree", "add", "--detach", str(base_tree), args.base)
        try:
            with stack("revisions") as s:
                asyncio.run(seed(s.cassandra_config(), texts))
                procs = {
                    "base": s.start_embark("embark-base", source=base_tree),
                    "head": s.start_embark("embark-head"),
                }
                for proc in procs.values():
                    warm_until_held(proc, f"127.0.0.1:{proc.health_port}", texts, 1)
                if args.batch:
                    method, asks, in_flight = "BatchGetEmbeddings", batches(texts, args.batch), 2
                else:
                    method, in_flight = "GetEmbedding", args.concurrency
                    asks = [single(t) for t in random.sample(texts, min(2000, len(texts)))]
                targets = {n: (f"127.0.0.1:{p.health_port}", [p.pid]) for n, p in procs.items()}
                result["runs"] = alternating_rounds(
                    {side: targets[side] for side in SIDES},
                    method,
                    asks,
                    rounds=args.rounds,
                    label="side",
                    concurrency=in_flight,
                    connections=2 if args.batch else 1,
                    seconds=args.seconds,
                )
        finally:
            _git("worktree", "remove", "--force", str(base_tree))
    result["summary"] = summarise(result["runs"])
    print(report(result))
    print(f"\nwrote {write_result(f'revisions-{args.name}', result)}")


def _git(*argv: str) -> str:
    done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per side, head's ratio to base, and the rounds in which head cost less."""

    def us(r: dict[str, Any]) -> float:
        return 1e6 / float(r["loaded"]["calls_per_server_cpu_s"])

    def per_ghz(r: dict[str, Any]) -> float:
        return server_over_ghz(r["loaded"])

    out: dict[str, Any] = {}
    for side in SIDES:
        mine = [r for r in runs if r["side"] == side]
        out[side] = {
            "server_cpu_us_per_call": statistics.median(us(r) for r in mine),
            "server_cpu_per_ghz_cpu": statistics.median(per_ghz(r) for r in mine),
            "rps": statistics.median(r["loaded"]["rps"] for r in mine),
            "p99_ms": statistics.median(r["loaded"]["p99_ms"] for r in mine),
            "errors": sum(r["loaded"]["errors"] for r in mine),
        }
    by_round = {(r["side"], r["round"]): per_ghz(r) for r in runs}
    rounds = sorted({r["round"] for r in runs})
    out["head_x_base_cpu"] = (
        out["head"]["server_cpu_per_ghz_cpu"] / out["base"]["server_cpu_per_ghz_cpu"]
    )
    out["head_x_base_rps"] = out["head"]["rps"] / out["base"]["rps"]
    out["rounds_head_cheaper"] = sum(by_round["head", n] < by_round["base", n] for n in rounds)
    out["rounds"] = len(rounds)
    return out


def report(result: dict[str, Any]) -> str:
    s = result["summary"]
    rows = [
        [
            f"{side} ({result[side]})",
            s[side]["server_cpu_per_ghz_cpu"],
            s[side]["server_cpu_us_per_call"],
            s[side]["rps"],
            s[side]["p99_ms"],
        ]
        for side in SIDES
    ]
    headers = ["embark serve", "server CPU / ghz CPU", "server CPU us/call", "calls/s", "p99 ms"]
    batch = result["args"].get("batch", 0)
    calls = f"BatchGetEmbeddings of {batch}" if batch else "GetEmbedding"
    summary = (
        f"Calls: {calls}. head / base: CPU a call (over ghz's) x{s['head_x_base_cpu']:.3f}, calls/s"
        f" x{s['head_x_base_rps']:.3f}; head cheaper in {s['rounds_head_cheaper']} of"
        f" {s['rounds']} rounds"
    )
    return f"{table(headers, rows)}\n\n{summary}"


if __name__ == "__main__":
    main()
