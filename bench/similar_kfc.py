"""What similarity search costs KFC: its stored-vectors rate with the vector index written
beside every row (``KFC_STORE__SIMILARITY_SEARCH=true``) against without, same run.

One stack (Retina, Cassandra, Kafka; the schema applied with search on, so the vector tables
exist). KFC is started, drains a burst of ``--jobs`` new texts, and is stopped; once with search
off, once on, alternating for ``--rounds`` rounds so that drift of the shared box falls on both.
The rate is KFC's stored jobs (``kfc_jobs_total{outcome="stored"}``) per second between the
moment a tenth of the burst is stored and the last one, so that KFC's start and group join,
the same in both, do not dilute the difference; the Cassandra process's CPU seconds per stored
job over the same window are recorded beside it.

    .venv/bin/python -m bench.similar_kfc [--jobs 1500] [--rounds 3]

Writes bench/results/similar_kfc.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Any

from bench.kfc_retina import drain
from bench.stack import Stack, listener_pid, machine, stack, table, write_result

GOAL_MAX_LOSS = 0.15


def drain_search(s: Stack, jobs: int, search: bool, cassandra: int | None) -> dict[str, Any]:
    """One burst through KFC with search on or off (``bench.kfc_retina.drain``)."""
    run = drain(
        s,
        jobs,
        {"cassandra": cassandra},
        KFC_STORE__SIMILARITY_SEARCH="true" if search else "false",
    )
    return {
        "search": search,
        "jobs": jobs,
        "window_jobs": run["window_jobs"],
        "window_s": run["window_s"],
        "stored_per_s": run["texts_per_s"],
        "cassandra_cpu_ms_per_job": run["cpu_ms_per_text"].get("cassandra"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "runs": []}
    with stack("similar_kfc") as s:
        s.apply_schema(EMBARK_STORE__SIMILARITY_SEARCH="true")
        s.start_retina()
        pid = listener_pid(s.cassandra)
        # Discarded: the first burst pays Retina's and KFC's first-call costs (the first
        # measured drain ran at half the rate of the others without it).
        print("warm-up: KFC with search off", flush=True)
        result["warmup"] = drain_search(s, args.jobs, False, pid)
        for n in range(args.rounds):
            for search in (False, True) if n % 2 == 0 else (True, False):
                print(f"round {n + 1}: KFC with search {'on' if search else 'off'}", flush=True)
                result["runs"].append(drain_search(s, args.jobs, search, pid))
    rates = {
        search: statistics.mean(r["stored_per_s"] for r in result["runs"] if r["search"] is search)
        for search in (False, True)
    }
    result["stored_per_s"] = {"search_off": rates[False], "search_on": rates[True]}
    result["rate_ratio_on_vs_off"] = rates[True] / rates[False]
    result["goal_max_loss"] = GOAL_MAX_LOSS
    result["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(
        table(
            ["KFC", "jobs timed", "seconds", "stored/s", "Cassandra CPU ms/job"],
            [
                ["search " + ("on" if r["search"] else "off"), r["window_jobs"], r["window_s"],
                 r["stored_per_s"], r["cassandra_cpu_ms_per_job"]]
                for r in result["runs"]
            ],
        )
    )  # fmt: skip
    loss = 1 - result["rate_ratio_on_vs_off"]
    print(
        f"\nsearch on / off: {result['rate_ratio_on_vs_off']:.2f} (a {loss:.0%} lower rate;"
        f" goal: at most {GOAL_MAX_LOSS:.0%})"
    )
    print(f"wrote {write_result('similar_kfc', result)}")


if __name__ == "__main__":
    main()
