"""The sweep behind ``EMBARK_STORE__CASSANDRA__READ_BATCH_KEYS``: how many keys one Cassandra
read request should carry. The real ``CassandraStore`` reads batches of ``--batch`` random
stored keys (a BatchGetEmbeddings of that size missing the LRU) at each setting; settings are
visited in a shuffled order every round, so a drifting box falls on all of them.

    .venv/bin/python -m bench.read_batch [--rows 5000] [--batch 1024] [--rounds 5]

Writes bench/results/read_batch.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from typing import Any

from bench.inputs import titles
from bench.stack import ARTIFACTS, TEXT_MODEL, machine, seed, stack, table, write_result
from embark.catalog import Catalog
from embark.keys import canonical_text, derive_key
from embark.store.cassandra import CassandraConfig, open_cassandra_store

SETTINGS = (1, 8, 16, 32, 64, 128, 256)


async def keys_per_s(config: CassandraConfig, keys: list[str], batch: int, calls: int) -> float:
    store = await open_cassandra_store(config)
    try:
        await store.get_many(random.sample(keys, batch))  # connections and prepares warm
        started = time.perf_counter()
        for _ in range(calls):
            found = await store.get_many(random.sample(keys, batch))
            assert len(found) == batch, f"{len(found)} of {batch} keys found"
        return batch * calls / (time.perf_counter() - started)
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--calls", type=int, default=3, help="batches per setting per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    random.seed(16)
    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "runs": []}
    spec = Catalog.load(ARTIFACTS / "catalog.json").require(TEXT_MODEL)
    texts = titles(args.rows, prefix="read batch")
    keys = [derive_key(spec.name, spec.revision, "text", canonical_text(t)).digest for t in texts]
    with stack("read_batch") as s:
        asyncio.run(seed(s.cassandra_config(), texts))
        for n in range(args.rounds):
            for setting in random.sample(SETTINGS, len(SETTINGS)):
                config = s.cassandra_config().model_copy(update={"read_batch_keys": setting})
                rate = asyncio.run(keys_per_s(config, keys, args.batch, args.calls))
                result["runs"].append(
                    {"round": n + 1, "read_batch_keys": setting, "keys_per_s": rate}
                )
                print(f"round {n + 1}: {setting} keys a request: {rate:,.0f} keys/s", flush=True)
    rates = {
        k: statistics.median(r["keys_per_s"] for r in result["runs"] if r["read_batch_keys"] == k)
        for k in SETTINGS
    }
    result["median_keys_per_s"] = {str(k): v for k, v in rates.items()}
    print(report(result))
    print(f"\nwrote {write_result('read_batch', result)}")


def report(r: dict[str, Any]) -> str:
    rates = {int(k): v for k, v in r["median_keys_per_s"].items()}
    return table(
        ["keys a request", "keys/s (median of rounds)", "x one key a request"],
        [[k, v, f"{v / rates[1]:.1f}x"] for k, v in sorted(rates.items())],
    )


if __name__ == "__main__":
    main()
