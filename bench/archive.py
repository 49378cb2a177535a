"""How the hit path's cost grows with the work:

1. Archive size: ``--sizes`` rows (default 10k, 100k and 1M) seeded into Cassandra through
   the store (not the encoder), flushed, and left until no compaction is pending (the
   archive at rest; its SSTable count is recorded); for each size, `embark serve` without
   its LRU (every call reads Cassandra) asked for random stored keys by ghz: latency (one in
   flight) and calls/s (``--concurrency`` in flight). Sizes are cumulative: the 100k archive
   is the 10k one plus 90k rows, so each size costs only its new rows.
2. The LRU's hit ratio against a Zipf-distributed working set larger than the cache: the real
   ``CachingStore`` in this process, in front of an in-memory archive, for several cache sizes
   (a fraction of the working set) and Zipf exponents: the curve.
3. The LRU's own cost per hit: ``CachingStore``'s OrderedDict against cachetools.LRUCache
   (when cachetools is importable; it is not a project dependency), same keys, same hits.

    make bench-archive      # or: .venv/bin/python -m bench.archive [--sizes 10000,100000,1000000]

Prints the tables; writes bench/results/archive.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bench.ghz import ghz
from bench.hotpath import single
from bench.inputs import titles
from bench.stack import machine, seed, settle, stack, table, write_result
from embark.metrics import EmbarkMetrics
from embark.store.base import FailureRecord, Lookup, StoredVector
from embark.store.cached import CachingStore, entry_cost


def archive_curve(sizes: Sequence[int], seconds: float, concurrency: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with stack("archive") as s:
        texts: list[str] = []
        for size in sorted(sizes):
            new = titles(size, prefix="archive")[len(texts) :]
            print(f"seeding {len(new)} rows (archive of {size}) ...", flush=True)
            started = time.perf_counter()
            asyncio.run(seed(s.cassandra_config(), new))
            seeded_s = time.perf_counter() - started
            texts += new
            at_rest = settle(s.keyspace, "embeddings")
            cold = s.start_embark(f"embark-cold-{size}", cache_bytes=0)
            target = f"127.0.0.1:{cold.health_port}"
            asks = [single(t) for t in random.sample(texts, min(5000, len(texts)))]
            print(f"asking ({size} rows) ...", flush=True)
            lat = ghz(target, "GetEmbedding", asks, concurrency=1, total=1000)
            thr = ghz(
                target,
                "GetEmbedding",
                asks,
                concurrency=concurrency,
                connections=4,
                seconds=seconds,
                pids=[cold.pid],
            )
            cold.stop()
            rows.append(
                {
                    "rows": size,
                    "seed_rows_per_s": len(new) / seeded_s,
                    **at_rest,
                    "latency": lat,
                    "throughput": thr,
                }
            )
    return rows


class _MemoryArchive:
    """The archive behind the LRU for the hit-ratio curve: the policy is what is measured, so
    the archive only has to answer (a dict, no I/O)."""

    def __init__(self, rows: Mapping[str, StoredVector]) -> None:
        self.rows = rows

    async def get_many(self, keys: Sequence[str]) -> Mapping[str, Lookup]:
        return {k: self.rows[k] for k in keys if k in self.rows}

    async def put_many(self, rows: Sequence[StoredVector]) -> None:
        raise NotImplementedError

    async def put_failures(self, rows: Sequence[FailureRecord]) -> None:
        raise NotImplementedError

    async def scan(self, model: str, revision: str) -> Sequence[StoredVector]:
        raise NotImplementedError

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _row(i: int, dim: int = 384) -> StoredVector:
    return StoredVector(f"{i:032x}", "m", "r", "text", f"title {i}", bytes(4 * dim), dim, 0)


def zipf_keys(n_keys: int, n_requests: int, s: float, rng: np.random.Generator) -> list[int]:
    """``n_requests`` draws from a Zipf(s) over ``n_keys`` ranks (bounded, any s > 0)."""
    weights = 1.0 / np.arange(1, n_keys + 1) ** s
    ranks = rng.choice(n_keys, size=n_requests, p=weights / weights.sum())
    # Shuffle which key holds which rank, so popularity is not key order.
    perm = rng.permutation(n_keys)
    return [int(perm[r]) for r in ranks]


def hit_ratio_curve(
    n_keys: int, n_requests: int, fractions: Sequence[float], exponents: Sequence[float]
) -> list[dict[str, float]]:
    rows = {f"{i:032x}": _row(i) for i in range(n_keys)}
    per_entry = entry_cost(next(iter(rows.values())))
    rng = np.random.default_rng(16)
    out = []
    for s in exponents:
        stream = [f"{i:032x}" for i in zipf_keys(n_keys, n_requests, s, rng)]
        for fraction in fractions:
            metrics = EmbarkMetrics()
            lru = CachingStore(
                _MemoryArchive(rows), max_bytes=int(fraction * n_keys * per_entry), metrics=metrics
            )

            async def replay(lru: CachingStore = lru, stream: list[str] = stream) -> None:
                for key in stream:
                    await lru.get_many([key])

            asyncio.run(replay())
            hits = metrics.cache_hits._value.get()
            out.append(
                {
                    "zipf_s": s,
                    "cache_fraction": fraction,
                    "hit_ratio": hits / n_requests,
                    # What a perfect cache of that many entries would hit (the top ranks).
                    "ideal_hit_ratio": _ideal(stream, int(fraction * n_keys)),
                }
            )
    return out


def _ideal(stream: list[str], capacity: int) -> float:
    counts: dict[str, int] = {}
    for k in stream:
        counts[k] = counts.get(k, 0) + 1
    top = sorted(counts.values(), reverse=True)[:capacity]
    # The first ask of each cached key is a miss whatever the policy.
    return (sum(top) - len(top)) / len(stream)


def lru_cost(n_keys: int = 10_000, n_gets: int = 500_000) -> dict[str, Any]:
    """ns per hit: CachingStore's OrderedDict lookup + move_to_end, against cachetools'
    LRUCache and against a read from LMDB, the candidate for one cache in shared memory for
    all workers (each when importable; neither is a project dependency)."""
    keys = [f"{i:032x}" for i in range(n_keys)]
    rows = {k: _row(i) for i, k in enumerate(keys)}
    order = [keys[i] for i in np.random.default_rng(1).integers(0, n_keys, n_gets)]
    od: OrderedDict[str, StoredVector] = OrderedDict(rows)
    started = time.perf_counter()
    for k in order:
        row = od.get(k)
        if row is not None:
            od.move_to_end(k)
    result: dict[str, Any] = {
        "ordereddict_ns_per_hit": (time.perf_counter() - started) / n_gets * 1e9
    }
    result.update(_cachetools_cost(rows, order))
    result.update(_lmdb_cost(rows, order))
    return result


def _cachetools_cost(rows: Mapping[str, StoredVector], order: Sequence[str]) -> dict[str, Any]:
    try:
        import cachetools  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return {}
    cache = cachetools.LRUCache(maxsize=len(rows) + 1)
    for k, v in rows.items():
        cache[k] = v
    started = time.perf_counter()
    for k in order:
        cache.get(k)
    return {
        "cachetools_ns_per_hit": (time.perf_counter() - started) / len(order) * 1e9,
        "cachetools_version": cachetools.__version__,
    }


def _lmdb_cost(rows: Mapping[str, StoredVector], order: Sequence[str]) -> dict[str, Any]:
    """A hit from a memory-mapped LMDB shared by every worker: one read transaction per
    lookup (a GetEmbedding asks one key), the vector copied out and wrapped as the LRU's
    hit is. Reads only: keeping LRU order in shared memory would make every hit a write
    transaction, and LMDB serialises those across processes."""
    try:
        import lmdb  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return {}
    # /dev/shm: where workers would share it (a disk-backed map is 2x slower here).
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=shm) as tmp:
        env = lmdb.open(tmp, map_size=1 << 30, max_dbs=0, lock=True)
        with env.begin(write=True) as txn:
            for k, row in rows.items():
                txn.put(k.encode(), row.vector)
        template = next(iter(rows.values()))
        started = time.perf_counter()
        for k in order:
            with env.begin(buffers=True) as txn:
                found = txn.get(k.encode())
                if found is not None:
                    StoredVector(
                        k,
                        template.model,
                        template.revision,
                        template.kind,
                        template.input,
                        bytes(found),
                        template.dim,
                        template.created_at_ms,
                    )
        elapsed = time.perf_counter() - started
        env.close()
    return {"lmdb_ns_per_hit": elapsed / len(order) * 1e9, "lmdb_version": lmdb.__version__}


def float16_fidelity(n: int = 2000) -> dict[str, Any]:
    """Cosine of each vector stored as float16 (``vectors.narrow`` then ``widen``, what the
    archive does with EMBARK_STORE__VECTOR_DTYPE=float16) to its float32 self: on real
    MiniLM-L6 vectors of ``n`` titles (the built int8 model, in this process) and on random
    unit vectors; and the bytes a stored vector takes in each form."""
    from bench.stack import ARTIFACTS, TEXT_MODEL
    from embark import vectors
    from retina.encoders.text import load

    model_dir = max((ARTIFACTS / TEXT_MODEL).glob("*/model.onnx"), key=lambda p: p.stat().st_mtime)
    encoder = load(model_dir.parent, name=TEXT_MODEL, revision="bench", intra_op_threads=1)
    texts = titles(n, prefix="fidelity")
    real = np.concatenate(
        [encoder.infer([encoder.preprocess(t) for t in texts[i : i + 64]]) for i in range(0, n, 64)]
    ).astype("<f4")
    rng = np.random.default_rng(5)
    rand = rng.standard_normal((n, real.shape[1])).astype("<f4")
    rand /= np.linalg.norm(rand, axis=1, keepdims=True)
    out: dict[str, Any] = {"dim": int(real.shape[1]), "vectors": n}
    for name, matrix in (("minilm_l6", real), ("random_unit", rand)):
        cos = []
        for v in matrix:
            back = np.frombuffer(vectors.widen(vectors.narrow(v.tobytes()), v.shape[0]), "<f4")
            cos.append(float(back @ v / (np.linalg.norm(back) * np.linalg.norm(v))))
        out[name] = {"cosine_min": min(cos), "cosine_mean": float(np.mean(cos))}
    dim = out["dim"]
    out["bytes_per_vector"] = {"float32": 4 * dim, "float16": 2 * dim}
    row = _row(0, dim)
    out["lru_bytes_per_entry_float32"] = entry_cost(row)
    started = time.perf_counter()
    blob16 = vectors.narrow(row.vector)
    for _ in range(20_000):
        vectors.widen(blob16, dim)
    out["widen_ns_per_vector"] = (time.perf_counter() - started) / 20_000 * 1e9
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="10000,100000,1000000", help="archive sizes, comma-separated"
    )
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--zipf-keys", type=int, default=100_000)
    parser.add_argument("--zipf-requests", type=int, default=300_000)
    parser.add_argument("--skip-archive", action="store_true", help="only the in-process parts")
    parser.add_argument("--only-archive", action="store_true", help="only the archive sizes")
    args = parser.parse_args()
    random.seed(16)
    result: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    if not args.only_archive:
        print("LRU cost per hit ...", flush=True)
        result["lru_cost"] = lru_cost()
        print("float16 fidelity ...", flush=True)
        result["float16"] = float16_fidelity()
        print("Zipf hit-ratio curve ...", flush=True)
        result["zipf"] = hit_ratio_curve(
            args.zipf_keys, args.zipf_requests, (0.01, 0.025, 0.05, 0.1, 0.25, 0.5), (0.8, 1.0, 1.2)
        )
    if not args.skip_archive:
        sizes = [int(x) for x in args.sizes.split(",") if x]
        result["archive"] = archive_curve(sizes, args.seconds, args.concurrency)
    report(result)
    # --only-archive writes its own file, so the in-process parts' results stay.
    print(f"\nwrote {write_result('archive-sizes' if args.only_archive else 'archive', result)}")


def report(result: dict[str, Any]) -> None:
    if "zipf" in result:
        print(f"\nLRU cost per hit: {result['lru_cost']}")
        print(f"\nfloat16 storage: {result['float16']}")
        print("\nLRU hit ratio, Zipf working set")
        print(zipf_table(result))
    if "archive" in result:
        print("\nCassandra-path hits by archive size")
        print(archive_table(result))


def zipf_table(result: dict[str, Any]) -> str:
    return table(
        ["Zipf s", "cache / working set", "LRU hit ratio", "ideal (top keys pinned)"],
        [
            [z["zipf_s"], f"{z['cache_fraction']:.1%}", z["hit_ratio"], z["ideal_hit_ratio"]]
            for z in result["zipf"]
        ],
    )


def archive_table(result: dict[str, Any]) -> str:
    return table(
        [
            "rows",
            "p50 ms (1 in flight)",
            "p99 ms",
            "calls/s",
            "in flight",
            "p99 ms loaded",
            "server CPU",
            "seeded rows/s",
            "SSTables",
        ],
        [
            [
                a["rows"],
                a["latency"]["p50_ms"],
                a["latency"]["p99_ms"],
                a["throughput"]["rps"],
                a["throughput"]["concurrency"],
                a["throughput"]["p99_ms"],
                f"{a['throughput']['server_cpu_share']:.0%}",
                a["seed_rows_per_s"],
                a.get("sstables", "?"),
            ]
            for a in result["archive"]
        ],
    )


if __name__ == "__main__":
    main()
