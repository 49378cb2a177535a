"""Similarity search on real embeddings: Cassandra 5's ANN against exact numpy search, the
embedded (SQLite, exact) index, and what the index costs the store's writes and hit path.

    .venv/bin/python -m bench.similar_corpus --artifacts artifacts   # once
    .venv/bin/python -m bench.similar [--queries 1000] [--write-rows 3000]

On the cached corpus (``bench/similar_corpus.py``: 100k MiniLM-L6 vectors of CN2023
descriptions, their shortened forms and docstring sentences), in one run:

1. **SQLite (embedded)**: the 100k rows written to a fresh SQLite store, then
   ``SqliteSimilarityIndex.search`` (first call: the load; then exact search) at one query in
   flight, and queries/s with 8 in flight.
2. **Write cost (Cassandra)**: ``put_many`` rows/s of the plain store against the
   ``IndexingStore`` (store + vector table with its SAI index), alternating blocks on the same
   node, with the Cassandra process's CPU seconds per row for each.
3. **ANN (Cassandra)**: the whole corpus in a vector table (``--keyspace``, reused by later runs
   when complete), then ``--queries`` corpus vectors as queries: recall@10 against exact numpy
   over the same vectors (the query's own row left out of both), p50/p99 with one query in
   flight, queries/s with ``--concurrency`` in flight.
4. **Hit path**: ``get_many`` of 64 stored keys through the plain store and through the
   ``IndexingStore`` (what EmbArk reads through when search is on), alternating.

Writes bench/results/similar.json. The node is the shared devstack Cassandra on a 2-core box
where other work runs too: read ratios within one run, and the load average it records.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cassandra.cluster import Cluster
from cassandra.query import SimpleStatement

from bench.similar_corpus import load_corpus
from bench.stack import (
    CASSANDRA,
    cpu_seconds,
    listener_pid,
    machine,
    nodetool,
    percentiles,
    sstables,
    table,
    write_result,
)
from embark import vectors
from embark.keys import derive_key
from embark.retry import Backoff
from embark.similar.base import F32, Space, unit_rows
from embark.similar.cassandra import CassandraSimilarityIndex, schema_statements, table_name
from embark.similar.indexing import IndexingStore
from embark.similar.sqlite import open_sqlite_index
from embark.store.base import StoredVector
from embark.store.cassandra import CassandraConfig, apply_schema, open_cassandra_store
from embark.store.sqlite import SqliteConfig, open_sqlite_store

MODEL = "minilm-l6"
_INSERT_RETRY = Backoff(initial_s=1.0, max_s=15.0, attempts=6)
TARGETS = {"recall_at_10": 0.98, "p99_ms_one_in_flight": 25.0, "qps_saturated": 150.0,
           "write_rate_loss_max": 0.15}  # fmt: skip


def rows_of(
    space: Space, texts: Sequence[str], matrix: npt.NDArray[np.float32]
) -> list[StoredVector]:
    return [
        StoredVector(
            key=derive_key(space.model, space.revision, "text", text).digest,
            model=space.model,
            revision=space.revision,
            kind="text",
            input=text,
            vector=vectors.to_bytes(vector, space.dim),
            dim=space.dim,
            created_at_ms=int(time.time() * 1000),
        )
        for text, vector in zip(texts, matrix, strict=True)
    ]


def exact_top(units: npt.NDArray[np.float32], queries: Sequence[int], k: int) -> list[list[int]]:
    """Exact top-k rows by cosine of each query row, the row itself left out."""
    out = []
    for start in range(0, len(queries), 256):
        chunk = list(queries[start : start + 256])
        scores = units[chunk] @ units.T
        scores[np.arange(len(chunk)), chunk] = -np.inf
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        for r, row in enumerate(top):
            out.append(row[np.argsort(-scores[r, row])].tolist())
    return out


async def timed(calls: Sequence[Callable[[], Awaitable[Any]]]) -> list[float]:
    samples = []
    for call in calls:
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


async def saturate(calls: Sequence[Callable[[], Awaitable[Any]]], concurrency: int) -> float:
    feed = iter(calls)

    async def worker() -> None:
        for call in feed:
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(calls) / (time.perf_counter() - started)


async def bench_sqlite(
    space: Space, rows: list[StoredVector], queries: list[int], concurrency: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "embark.sqlite3"
        store = await open_sqlite_store(SqliteConfig(path=path))
        started = time.perf_counter()
        for i in range(0, len(rows), 2000):
            await store.put_many(rows[i : i + 2000])
        write_s = time.perf_counter() - started
        index = await open_sqlite_index(path)
        try:
            query_vectors = [vectors.from_bytes(rows[q].vector, space.dim) for q in queries]
            started = time.perf_counter()
            await index.search(space, query_vectors[0], 11)
            load_s = time.perf_counter() - started
            calls = [lambda v=v: index.search(space, v, 11) for v in query_vectors]
            samples = await timed(calls)
            qps = await saturate(calls, concurrency)
            found = [[n.key for n in await index.search(space, v, 11)] for v in query_vectors[:50]]
        finally:
            await index.close()
            await store.close()
    return {
        "rows": len(rows),
        "store_write_rows_per_s": len(rows) / write_s,
        "first_search_load_s": load_s,
        "one_in_flight": percentiles(samples),
        "qps": qps,
        "concurrency": concurrency,
        "_found": found,
    }


async def bench_writes(
    config: CassandraConfig, space: Space, rows: list[StoredVector], block: int
) -> dict[str, Any]:
    """Plain and indexed put_many of disjoint rows, in alternating blocks of ``block`` rows."""
    await asyncio.to_thread(apply_schema, config, schema_statements(config.keyspace, [space]))
    plain = await open_cassandra_store(config)
    indexed = IndexingStore(plain, CassandraSimilarityIndex(plain))
    pid = listener_pid(CASSANDRA)
    # wall s, Cassandra CPU s, this process's CPU s, rows
    spent = {"plain": [0.0, 0.0, 0.0, 0], "indexed": [0.0, 0.0, 0.0, 0]}
    try:
        for n, start in enumerate(range(0, len(rows), block)):
            which = "plain" if n % 2 == 0 else "indexed"
            store = plain if which == "plain" else indexed
            chunk = rows[start : start + block]
            cpu0 = cpu_seconds(pid) if pid else 0.0
            own0 = time.process_time()
            started = time.perf_counter()
            for i in range(0, len(chunk), 256):  # KFC's batch size
                # Retried as KFC retries a batch (a WriteTimeout under load is a passing
                # fault); the time spent retrying counts against the store that needed it.
                async for attempt in _INSERT_RETRY.retrying(what=f"{which} put_many"):
                    with attempt:
                        await store.put_many(chunk[i : i + 256])
            spent[which][0] += time.perf_counter() - started
            spent[which][1] += (cpu_seconds(pid) if pid else 0.0) - cpu0
            spent[which][2] += time.process_time() - own0
            spent[which][3] += len(chunk)
    finally:
        await plain.close()
    out: dict[str, Any] = {}
    for which, (wall, cpu, own, count) in spent.items():
        out[which] = {
            "rows": count,
            "rows_per_s": count / wall,
            "cassandra_cpu_ms_per_row": 1000 * cpu / count if pid else None,
            "client_cpu_ms_per_row": 1000 * own / count,
        }
    out["rate_ratio_indexed_vs_plain"] = out["indexed"]["rows_per_s"] / out["plain"]["rows_per_s"]
    if pid:
        out["cpu_ratio_indexed_vs_plain"] = (
            out["indexed"]["cassandra_cpu_ms_per_row"] / out["plain"]["cassandra_cpu_ms_per_row"]
        )
    return out


async def bench_ann(
    config: CassandraConfig,
    space: Space,
    rows: list[StoredVector],
    queries: list[int],
    concurrency: int,
    *,
    insert_only: bool = False,
    compact: bool = False,
    flush_every: int = 0,
) -> dict[str, Any]:
    await asyncio.to_thread(apply_schema, config, schema_statements(config.keyspace, [space]))
    store = await open_cassandra_store(config)
    inserted = 0
    index = CassandraSimilarityIndex(store)
    indexed = IndexingStore(store, index)
    try:
        table = f"{config.keyspace}.{table_name(space.model, space.revision)}"
        present = await asyncio.to_thread(table_keys, config, table)
        # Resume by key, never by count: the corpus's order changed once between runs (a
        # partial corpus is a random sample), and resuming "after the first `count` rows"
        # left 24,600 of 100,000 rows out of the table, which is what the 0.74 recall measured.
        missing = [row for row in rows if row.key not in present]
        if flush_every:
            # Keep every flushed SSTable (size-tiered compaction would merge each 4 of equal
            # size), as a table written faster than compaction keeps up holds many.
            nodetool("disableautocompaction", *table.split("."))
        insert_s = None
        if missing:
            started = time.perf_counter()
            for i in range(0, len(missing), 256):
                # A write timeout while SAI builds its graph on a busy node is a passing fault:
                # the project's one retry policy, as KFC would.
                async for attempt in _INSERT_RETRY.retrying(what="inserting the corpus"):
                    with attempt:
                        await indexed.put_many(missing[i : i + 256])
                if i % 10240 == 0:
                    print(f"  inserted {i}/{len(missing)}", flush=True)
                if flush_every and (i // 256 + 1) % max(1, flush_every // 256) == 0:
                    # An SSTable per `flush_every` rows, as a long-running KFC leaves them.
                    nodetool("flush", *table.split("."))
            insert_s = time.perf_counter() - started
            inserted = len(missing)
        in_table = await asyncio.to_thread(table_keys, config, table)
        if in_table != {row.key for row in rows}:
            raise SystemExit(
                f"{table} holds {len(in_table)} keys, not the corpus's {len(rows)}: refusing to"
                " measure recall against vectors the index does not have"
            )
        if insert_only:
            return {"inserted": inserted, "insert_s": insert_s, "rows_in_table": len(in_table)}
        query_vectors = [vectors.from_bytes(rows[q].vector, space.dim) for q in queries]
        searched = await measure_search(index, space, query_vectors, concurrency)
        searched["sstables"] = sstables(table)
        print(f"  before compaction: { {k: v for k, v in searched.items() if k != '_found'} }")
        if compact:
            # One graph per SSTable: an ANN query searches each and merges, so its cost follows
            # the SSTable count. Same queries, same node, after a major compaction.
            started = time.perf_counter()
            nodetool("compact", *table.split("."))
            compact_s = time.perf_counter() - started
            after = await measure_search(index, space, query_vectors, concurrency)
            after["sstables"] = sstables(table)
            after["compaction_s"] = compact_s
        hit_keys = [row.key for row in rows]
        hit_plain, hit_indexed = [], []
        for rep in range(200):
            keys = random.Random(rep).sample(hit_keys, 64)
            hit_plain += await timed([lambda k=keys: store.get_many(k)])
            hit_indexed += await timed([lambda k=keys: indexed.get_many(k)])
    finally:
        await store.close()
    return {
        "rows": len(rows),
        "rows_in_table": len(in_table),
        "insert_s": insert_s,
        "insert_rows_per_s": inserted / insert_s if insert_s else None,
        **searched,
        **({"after_major_compaction": after} if compact else {}),
        "hit_path_get_many_64": {
            "plain": percentiles(hit_plain),
            "through_indexing_store": percentiles(hit_indexed),
        },
    }


async def measure_search(
    index: CassandraSimilarityIndex, space: Space, query_vectors: list[F32], concurrency: int
) -> dict[str, Any]:
    """Latency with one query in flight, queries/s with ``concurrency``, and the answers."""
    for v in query_vectors[:20]:  # warm-up: connections, first-query costs
        await index.search(space, v, 11)
    calls = [lambda v=v: index.search(space, v, 11) for v in query_vectors]
    samples = await timed(calls)
    qps = await saturate(calls, concurrency)
    found = [[n.key for n in await index.search(space, v, 11)] for v in query_vectors]
    return {
        "one_in_flight": percentiles(samples),
        "qps": qps,
        "concurrency": concurrency,
        "_found": found,
    }


def table_keys(config: CassandraConfig, table: str) -> set[str]:
    """Every key the vector table holds, read page by page (blocking; run in a thread)."""
    cluster = Cluster([config.contact_points[0].split(":")[0]])
    try:
        session = cluster.connect()
        statement = SimpleStatement(f"SELECT key FROM {table}", fetch_size=5000)
        return {row.key for row in session.execute(statement, timeout=120)}
    finally:
        cluster.shutdown()


def recall(
    found: list[list[str]], exact: list[list[int]], rows: list[StoredVector], queries: list[int]
) -> float:
    hits = 0
    for keys, truth, q in zip(found, exact, queries, strict=False):
        mine = [k for k in keys if k != rows[q].key][:10]
        hits += len(set(mine) & {rows[i].key for i in truth})
    return hits / (10 * len(found))


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    texts, matrix = load_corpus(args.corpus, partial=args.partial)
    name = args.corpus
    if args.rows:
        texts, matrix, name = texts[: args.rows], matrix[: args.rows], f"{name}-{args.rows}"
    space = Space(MODEL, f"bench-{name}", matrix.shape[1])
    rows = rows_of(space, texts, matrix)
    config = CassandraConfig(
        contact_points=(args.cassandra,), keyspace=args.keyspace, request_timeout_s=30.0
    )
    if args.insert_only:
        return await bench_ann(
            config, space, rows, [], 1, insert_only=True, flush_every=args.flush_every
        )
    units = unit_rows(matrix)
    rng = random.Random(7)
    queries = rng.sample(range(len(rows)), args.queries)
    exact = exact_top(units, queries, 10)
    result: dict[str, Any] = {
        "machine": machine(),
        "corpus": args.corpus,
        "corpus_rows": len(rows),
        "args": vars(args),
        "targets": TARGETS,
    }
    if not args.ann_only:
        await bench_sqlite_and_writes(
            args, result, config, space, rows, texts, matrix, queries, exact
        )

    print("cassandra: ANN", flush=True)
    ann = await bench_ann(
        config,
        space,
        rows,
        queries,
        args.concurrency,
        compact=args.compact,
        flush_every=args.flush_every,
    )
    ann["recall_at_10"] = recall(ann.pop("_found"), exact, rows, queries)
    if args.compact:
        after = ann["after_major_compaction"]
        after["recall_at_10"] = recall(after.pop("_found"), exact, rows, queries)
    result["cassandra_ann"] = ann
    result["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return result


async def bench_sqlite_and_writes(
    args: argparse.Namespace,
    result: dict[str, Any],
    config: CassandraConfig,
    space: Space,
    rows: list[StoredVector],
    texts: Sequence[str],
    matrix: npt.NDArray[np.float32],
    queries: list[int],
    exact: list[list[int]],
) -> None:
    rng = random.Random(8)
    print("sqlite: writing and searching", flush=True)
    sq = await bench_sqlite(space, rows, queries[: args.sqlite_queries], args.concurrency)
    sq["recall_at_10"] = recall(sq.pop("_found"), exact, rows, queries)
    result["sqlite_exact"] = sq
    write_result(args.out, result)  # each part is kept as soon as it is measured

    print("cassandra: write cost", flush=True)
    write_space = Space(MODEL, f"bench-writes-{int(time.time())}", matrix.shape[1])
    sample = rng.sample(range(len(rows)), args.write_rows)
    write_rows = rows_of(write_space, [texts[i] for i in sample], matrix[sample])
    result["write_cost"] = await bench_writes(
        config.model_copy(update={"keyspace": args.keyspace + "_w"}),
        write_space,
        write_rows,
        args.write_block,
    )

    write_result(args.out, result)


def report(result: dict[str, Any]) -> None:
    ann = result["cassandra_ann"]
    sq, wc = result.get("sqlite_exact"), result.get("write_cost")
    searches = [
        ("Cassandra SAI ANN, {} SSTables", run)
        for run in (ann, ann.get("after_major_compaction"))
        if run
    ]
    if sq:
        searches.insert(0, ("SQLite exact (numpy)", sq))
    print(
        table(
            ["index", "rows", "recall@10", "p50 ms", "p99 ms", "q/s"],
            [
                [label.format(run.get("sstables")), ann["rows"], run["recall_at_10"],
                 run["one_in_flight"]["p50_ms"], run["one_in_flight"]["p99_ms"], run["qps"]]
                for label, run in searches
            ],
        )
    )  # fmt: skip
    if wc:
        print()
        print(
            table(
                ["put_many", "rows/s", "Cassandra CPU ms/row", "client CPU ms/row"],
                [
                    [name, wc[name]["rows_per_s"], wc[name]["cassandra_cpu_ms_per_row"],
                     wc[name]["client_cpu_ms_per_row"]]
                    for name in ("plain", "indexed")
                ],
            )
        )  # fmt: skip
    hp = ann["hit_path_get_many_64"]
    print()
    print(
        table(
            ["hit path get_many(64)", "p50 ms", "p99 ms"],
            [[name, hp[name]["p50_ms"], hp[name]["p99_ms"]] for name in hp],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="minilm-l6-100k")
    parser.add_argument("--cassandra", default="127.0.0.1:9042")
    parser.add_argument("--keyspace", default="bench_similar")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--sqlite-queries", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--write-rows", type=int, default=4000)
    parser.add_argument("--write-block", type=int, default=500)
    parser.add_argument(
        "--partial", action="store_true", help="use the part of the corpus embedded so far"
    )
    parser.add_argument(
        "--compact",
        action="store_true",
        help="measure the ANN again after a major compaction (node started with JMX)",
    )
    parser.add_argument(
        "--insert-only", action="store_true", help="fill the ANN table, measure nothing"
    )
    parser.add_argument("--rows", type=int, default=0, help="the corpus's first ROWS only")
    parser.add_argument(
        "--flush-every",
        type=int,
        default=0,
        help="flush the vector table every N inserted rows (N SSTables' worth; needs JMX)",
    )
    parser.add_argument("--ann-only", action="store_true", help="skip SQLite and write cost")
    parser.add_argument("--out", default="similar", help="bench/results/OUT.json")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    if args.insert_only:
        print(result)
        return
    report(result)
    print(f"wrote {write_result(args.out, result)}")


if __name__ == "__main__":
    main()
