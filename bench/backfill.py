"""A backfill end to end, with one Retina and with two, in one run.

`embark backfill FILE` (the CLI, as a user runs it) asks EmbArk for every title of a file of
``--titles`` new ones; each miss goes EmbArk -> Kafka -> KFC -> Retina -> Cassandra. A run ends
when KFC has stored every title. Two setups, alternating which goes first each round:

- ``one``: one Retina with its default threads;
- ``two``: two Retinas with ``--threads`` intra-op threads each, KFC spreading its Embed calls
  over both (one channel, gRPC's round_robin over ``ipv4:A,B``).

Measured per run: titles/s from the backfill's start to the last stored vector, how long the
backfill itself took (every title asked and answered PENDING), and the CPU milliseconds per
title of every process on the path (EmbArk, KFC, each Retina, Cassandra, Kafka, the backfill
client): where the time goes.

    .venv/bin/python -m bench.backfill [--titles 100000] [--rounds 1] [--threads 1]

Writes bench/results/backfill.json.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.inputs import titles
from bench.kfc_retina import jobs_done
from bench.stack import (
    ROOT,
    TEXT_MODEL,
    Proc,
    Stack,
    cpu_seconds,
    free_port,
    listener_pid,
    machine,
    stack,
    table,
    write_result,
)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def start_setup(s: Stack, setup: str, threads: int) -> tuple[list[Proc], Proc]:
    """The Retinas of ``setup`` and a KFC that sends to them."""
    if setup == "one":
        retinas = [s.start_retina()]
    else:
        ports = [s.retina_port, free_port()]
        retinas = [
            s.start_retina(name=f"retina-{i}", port=port, RETINA_INTRA_OP_THREADS=str(threads))
            for i, port in enumerate(ports)
        ]
    address = "ipv4:" + ",".join(f"127.0.0.1:{r.health_port}" for r in retinas)
    return retinas, s.start_kfc(KFC_RETINA_ADDRESS=address)


def run_once(s: Stack, embark: Proc, setup: str, n: int, threads: int) -> dict[str, Any]:
    retinas, kfc = start_setup(s, setup, threads)
    pids = {
        "embark": embark.pid,
        "kfc": kfc.pid,
        **{f"retina-{i}": r.pid for i, r in enumerate(retinas)},
        "cassandra": listener_pid(s.cassandra),
        "kafka": listener_pid(s.kafka),
    }
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "titles.txt"
            path.write_text("\n".join(titles(n, prefix=f"backfill {uuid.uuid4().hex[:6]}")))
            before = {name: cpu_seconds(pid) for name, pid in pids.items() if pid}
            client_before = _children_cpu()
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "embark", "backfill", str(path), "--model", TEXT_MODEL,
                 "--target", f"127.0.0.1:{embark.health_port}", "--json"],
                cwd=ROOT, check=True, capture_output=True, timeout=1800,
            )  # fmt: skip
            asked_s = time.perf_counter() - started
            client_cpu = _children_cpu() - client_before
            stored = 0.0
            while stored < n and time.perf_counter() - started < 3600:
                stored = jobs_done(kfc)
                time.sleep(0.2)
            seconds = time.perf_counter() - started
            after = {name: cpu_seconds(pid) for name, pid in pids.items() if pid}
    finally:
        for proc in (kfc, *retinas):
            proc.stop()
            s.procs.remove(proc)
    if stored < n:
        raise SystemExit(f"{setup}: KFC stored {stored} of {n} titles in an hour")
    cpu = {name: 1000 * (after[name] - before[name]) / n for name in before}
    cpu["backfill client"] = 1000 * client_cpu / n
    return {
        "setup": setup,
        "titles": n,
        "seconds": seconds,
        "titles_per_s": n / seconds,
        "backfill_asked_s": asked_s,
        "cpu_ms_per_title": cpu,
    }


def report(r: dict[str, Any]) -> str:
    """Each run, where its CPU went, and the two setups' ratio."""
    names = sorted({name for x in r["runs"] for name in x["cpu_ms_per_title"]})
    runs = table(
        ["setup", "titles", "seconds", "titles/s", "asked in s", *[f"{n} CPU ms" for n in names]],
        [
            [
                "one Retina" if x["setup"] == "one" else "two Retinas",
                x["titles"],
                x["seconds"],
                x["titles_per_s"],
                x["backfill_asked_s"],
                *[x["cpu_ms_per_title"].get(n, float("nan")) for n in names],
            ]
            for x in r["runs"]
        ],
    )
    return f"{runs}\n\nTwo Retinas / one: **{r['two_vs_one']:.2f}x** the titles/s."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--titles", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads of each of two Retinas"
    )
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "runs": []}
    with stack("backfill") as s:
        embark = s.start_embark()
        for n in range(args.rounds):
            for setup in ("one", "two") if n % 2 == 0 else ("two", "one"):
                print(f"round {n + 1}: {setup} Retina(s), {args.titles} titles", flush=True)
                result["runs"].append(run_once(s, embark, setup, args.titles, args.threads))
    rate = {
        setup: statistics.mean(x["titles_per_s"] for x in result["runs"] if x["setup"] == setup)
        for setup in ("one", "two")
    }
    result["titles_per_s"] = rate
    result["two_vs_one"] = rate["two"] / rate["one"]
    print(report(result))
    print(f"\nwrote {write_result('backfill', result)}")


if __name__ == "__main__":
    main()
