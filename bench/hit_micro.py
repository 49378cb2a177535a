"""Micro-costs of choices on the hit path, each beside its alternative, in one run. No servers;
a few seconds.

- The deadline around a lookup the LRU answers alone: ``asyncio.wait_for`` against
  ``asyncio.timeout`` (and a bare ``await`` for scale), on uvloop and on asyncio's own loop. A
  hot lookup is a coroutine that returns without ever suspending; ``wait_for`` (Python 3.11)
  wraps it in a Task, so it runs one loop iteration later, plus a timer and a waiter future;
  ``asyncio.timeout`` arms a timer around the same coroutine awaited in place.
- Every call's latency and status metrics (``EmbarkMetrics.observe_request``): prometheus
  ``labels()`` looked up on each call against children kept per (api, route, code).
- An input's key (``KeyDeriver.key``): canonicalised and hashed on every call against
  remembered for recent short inputs (a 1,024-title batch asked again, as a hot one is).

    .venv/bin/python -m bench.hit_micro

Writes bench/results/hit_micro.json. Figures are the minimum over repeats (the least disturbed
run on a shared machine), per call in microseconds.
"""

from __future__ import annotations

import asyncio
import time
import timeit
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from bench.stack import machine, table, write_result
from embark.keys import KeyDeriver
from embark.metrics import EmbarkMetrics

CALLS = 20_000
REPEATS = 7
TIMEOUT_S = 1.0
ROUTE = "/embark.v1.EmbArk/GetEmbedding"


async def _hot_lookup() -> dict[str, int]:
    return {"key": 1}  # never suspends, like CachingStore.get_many when every key is in memory


async def _bare() -> object:
    return await _hot_lookup()


async def _wait_for() -> object:
    return await asyncio.wait_for(_hot_lookup(), TIMEOUT_S)


async def _timeout() -> object:
    async with asyncio.timeout(TIMEOUT_S):
        return await _hot_lookup()


DEADLINES: dict[str, Callable[[], Awaitable[object]]] = {
    "bare await": _bare,
    "asyncio.wait_for": _wait_for,
    "asyncio.timeout": _timeout,
}


async def _per_call_us(way: Callable[[], Awaitable[object]]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(CALLS):
            await way()
        best = min(best, time.perf_counter() - start)
    return best / CALLS * 1e6


async def _deadlines() -> dict[str, float]:
    return {name: await _per_call_us(way) for name, way in DEADLINES.items()}


def _metrics() -> dict[str, float]:
    metrics = EmbarkMetrics()
    started = time.perf_counter()

    def labels_each_call() -> None:
        metrics.request_seconds.labels("grpc", ROUTE).observe(time.perf_counter() - started)
        metrics.responses.labels("grpc", ROUTE, "OK").inc()

    def served() -> None:  # what EmbArk runs: the children kept per (api, route, code)
        metrics.observe_request("grpc", ROUTE, "OK", started)

    ways = {"labels() each call": labels_each_call, "observe_request (kept children)": served}
    return {
        name: min(timeit.repeat(way, number=CALLS, repeat=REPEATS)) / CALLS * 1e6
        for name, way in ways.items()
    }


def _keys() -> dict[str, float]:
    deriver = KeyDeriver("minilm-l6", "r-0000000000000000", "text")
    titles = [
        f"Red running shoes, size {i % 48}, pack of {i % 7} (colour {i})" for i in range(1024)
    ]

    def derived() -> None:
        for raw in titles:
            deriver.derive(deriver.canonical(raw))

    def remembered() -> None:
        for raw in titles:
            deriver.key(raw)

    remembered()  # the batch was asked before: its keys are remembered
    ways = {"canonicalise + hash each call": derived, "KeyDeriver.key (remembered)": remembered}
    return {
        name: min(timeit.repeat(way, number=CALLS // len(titles), repeat=REPEATS))
        / (CALLS // len(titles) * len(titles))
        * 1e6
        for name, way in ways.items()
    }


def main() -> None:
    result: dict[str, Any] = {"machine": machine(), "calls": CALLS, "repeats": REPEATS}
    result["asyncio"] = asyncio.run(_deadlines())
    result["uvloop"] = uvloop.run(_deadlines())
    result["metrics"] = _metrics()
    result["keys"] = _keys()
    print(report(result))
    print(f"\nwrote {write_result('hit_micro', result)}")


def report(result: dict[str, Any]) -> str:
    rows = [[name, result["asyncio"][name], result["uvloop"][name]] for name in DEADLINES]
    deadlines = table(["around a hot lookup", "asyncio µs/call", "uvloop µs/call"], rows)
    metrics = table(["per-call metrics", "µs/call"], [list(kv) for kv in result["metrics"].items()])
    keys = table(
        ["an input's key", "µs/input"], [list(kv) for kv in result.get("keys", {}).items()]
    )
    return f"{deadlines}\n\n{metrics}\n\n{keys}"


if __name__ == "__main__":
    main()
