"""The load test: Locust ramps to ``--users`` concurrent gRPC callers against the real stack
(`embark serve`, `kfc run`, `retina serve` on Cassandra and Kafka), mixed repeated and new
inputs, for a bounded time; then the failures, throughput and latency percentiles.

    make bench-load               # or: .venv/bin/python -m bench.load.run [--users 1000]

The hot set (``--hot-keys`` titles) is seeded into the archive first and read once, so the run
measures the steady state of a warm EmbArk; new inputs (``--miss-percent``) go the whole miss
path while the load runs. Traffic stays on 127.0.0.1. Writes bench/results/load.json and
Locust's CSVs (bench/results/load_*.csv).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.hotpath import warm
from bench.inputs import titles
from bench.stack import RESULTS, ROOT, machine, seed, stack, table, write_result


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _num(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--spawn-rate", type=float, default=40.0)
    parser.add_argument("--run-time", default="75s")
    parser.add_argument("--hot-keys", type=int, default=20_000)
    parser.add_argument("--miss-percent", type=int, default=2)
    parser.add_argument("--wait-s", default="1,3", help="min,max seconds between a user's calls")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    prefix = RESULTS / "load"
    result: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    with stack("load") as s:
        hot = titles(args.hot_keys, prefix="load")
        print(f"seeding {len(hot)} vectors ...", flush=True)
        asyncio.run(seed(s.cassandra_config(), hot))
        s.start_retina()
        embark = s.start_embark()
        kfc = s.start_kfc()
        target = f"127.0.0.1:{embark.health_port}"
        asyncio.run(warm(target, hot, 1024))
        before = embark.metrics()
        print(f"locust: {args.users} users, +{args.spawn_rate}/s, {args.run_time} ...", flush=True)
        locust = subprocess.run(
            [
                str(Path(sys.executable).with_name("locust")),
                "-f", str(ROOT / "bench" / "load" / "locustfile.py"),
                "--headless", "--only-summary",
                "-u", str(args.users), "-r", str(args.spawn_rate), "-t", args.run_time,
                "--host", target,
                "--csv", str(prefix), "--csv-full-history",
                "--stop-timeout", "10",
                "--exit-code-on-error", "0",
            ],
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "EMBARK_LOAD_HOT_KEYS": str(args.hot_keys),
                "EMBARK_LOAD_MISS_PERCENT": str(args.miss_percent),
                "EMBARK_LOAD_WAIT_S": args.wait_s,
            },
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )  # fmt: skip
        (RESULTS / "load_locust.log").write_text(locust.stdout + locust.stderr)
        if locust.returncode:
            print(locust.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"locust exited {locust.returncode}")
        after, kfc_after = embark.metrics(), kfc.metrics()
    stats = {row["Name"]: row for row in _rows(Path(f"{prefix}_stats.csv"))}
    history = _rows(Path(f"{prefix}_stats_history.csv"))
    result["requests"] = {
        name: {
            "requests": _num(row["Request Count"]),
            "failures": _num(row["Failure Count"]),
            "rps": _num(row["Requests/s"]),
            "p50_ms": _num(row["50%"]),
            "p90_ms": _num(row["90%"]),
            "p99_ms": _num(row["99%"]),
            "max_ms": _num(row["Max Response Time"]),
            "avg_ms": _num(row["Average Response Time"]),
        }
        for name, row in stats.items()
    }
    result["timeline"] = [
        {
            "t": _num(row["Timestamp"]),
            "users": _num(row["User Count"]),
            "rps": _num(row["Requests/s"]),
            "failures_s": _num(row["Failures/s"]),
            "p50_ms": _num(row["50%"]),
            "p95_ms": _num(row["95%"]),
            "p99_ms": _num(row["99%"]),
        }
        for row in history
        if row["Name"] == "Aggregated"
    ]
    result["peak_users"] = max((p["users"] for p in result["timeline"]), default=0)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    statuses = ("HIT", "PENDING", "FAILED", "UNAVAILABLE", "DROPPED")
    answers = {
        st: delta(f'embark_answers_total{{model="minilm-l6",status="{st}"}}') for st in statuses
    }
    result["embark"] = {
        "answers": answers,
        "hit_ratio": answers["HIT"] / max(1.0, sum(answers.values())),
        "cache_hits": delta("embark_cache_hits_total"),
        "cache_misses": delta("embark_cache_misses_total"),
        "cache_bytes": after.get("embark_cache_bytes", 0.0),
    }
    result["kfc_stored"] = kfc_after.get('kfc_jobs_total{outcome="stored"}', 0.0)
    report(result)
    print(f"\nwrote {write_result('load', result)}")


def report(result: dict[str, Any]) -> None:
    rows = [
        [name, r["requests"], r["failures"], r["rps"], r["p50_ms"], r["p90_ms"], r["p99_ms"],
         r["max_ms"]]
        for name, r in result["requests"].items()
    ]  # fmt: skip
    print(f"\nLocust, peak {result['peak_users']:.0f} concurrent users")
    print(
        table(
            ["calls", "requests", "failures", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows
        )
    )
    e = result["embark"]
    print(
        f"\nEmbArk during the run: hit ratio {e['hit_ratio']:.3f}, answers {e['answers']}, "
        f"LRU hits {e['cache_hits']:.0f} / misses {e['cache_misses']:.0f}; "
        f"KFC stored {result['kfc_stored']:.0f} new vectors"
    )
    agg = result["requests"].get("Aggregated", {})
    result["checks"] = {
        "0 failures": agg.get("failures", 1) == 0,
        ">= 1000 users": result["peak_users"] >= 1000,
    }
    print(
        "targets: "
        + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in result["checks"].items())
    )


if __name__ == "__main__":
    main()
