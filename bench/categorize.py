"""Categorize on cached embeddings against GetEmbedding, same run, same server, same keys.

What a head adds to a hit: the same archive lookup, then a mat-vec over the head's labels, the
TF-IDF features of the text and a softmax. This runs ``embark serve`` on real Cassandra and
Kafka (devstack) with a head of the served shape (97 labels x 384 dimensions, plus a lexical
vocabulary fitted on the inputs, random weights: the cost does not depend on their values),
seeds the vectors, warms the LRU, and measures in one run:

    latency     one call in flight: GetEmbedding, Categorize
    throughput  ``--concurrency`` callers in a closed loop: GetEmbedding, Categorize
    batch       BatchGetEmbeddings vs BatchCategorize of ``--batch`` inputs: inputs/s

    .venv/bin/python -m bench.categorize [--seconds 5]

Prints the table with the ratios; writes bench/results/categorize.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.inputs import titles
from bench.stack import (
    ARTIFACTS,
    TEXT_MODEL,
    machine,
    percentiles,
    seed,
    stack,
    table,
    write_result,
)
from embark.catalog import Catalog
from embark.heads.artifact import Head, Lexical, save_head
from embark.heads.prototypes import Prototypes, l2_normalise
from embark_api.v1 import embark_pb2, embark_pb2_grpc, inputs_pb2

HEAD = "bench"
ONE_PLAIN, BATCH_PLAIN = "Categorize, no prototypes", "BatchCategorize, no prototypes"
PLAIN = "bench-plain"  # the same head without its prototypes: what they cost, same run
PROTOTYPES = 1_232  # CN2023's HS4 headings: the default head's prototypes
Call = Callable[[embark_pb2_grpc.EmbArkStub, str], Any]


def make_head(texts: Sequence[str], directory: Path) -> None:
    """A head of the served shape on the catalog's text model revision: 97 labels, a TF-IDF
    vocabulary, and one prototype per CN2023 HS4 heading, as ``embark heads train`` makes by
    default; and the same head without prototypes (``PLAIN``)."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # type: ignore[import-untyped]

    spec = Catalog.load(ARTIFACTS / "catalog.json").require(TEXT_MODEL)
    rng = np.random.default_rng(0)
    labels = tuple(f"{i:02d}" for i in range(1, 98))
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(texts)
    vocab = {str(t): int(j) for t, j in vectorizer.vocabulary_.items()}
    head = Head(
        name=HEAD,
        version=1,
        labels=labels,
        model=spec.name,
        revision=spec.revision,
        dim=spec.dim,
        weights=rng.standard_normal((len(labels), spec.dim)).astype(np.float32),
        bias=np.zeros(len(labels), dtype=np.float32),
        lexical=Lexical(
            analyzer="word",
            ngram=(1, 2),
            vocabulary=vocab,
            idf=vectorizer.idf_.astype(np.float32),
            weights=rng.standard_normal((len(labels), len(vocab))).astype(np.float32),
        ),
        prototypes=Prototypes(
            l2_normalise(rng.standard_normal((PROTOTYPES, spec.dim)).astype(np.float32)),
            np.sort(np.r_[np.arange(len(labels)), rng.integers(0, len(labels), PROTOTYPES - 97)]),
            5.0,
        ),
    )
    save_head(head, directory)
    save_head(replace(head, name=PLAIN, prototypes=None), directory)


def get_embedding(stub: embark_pb2_grpc.EmbArkStub, text: str) -> Any:
    request = embark_pb2.GetEmbeddingRequest(model=TEXT_MODEL, input=inputs_pb2.Input(text=text))
    return stub.GetEmbedding(request, timeout=30)


def categorize(stub: embark_pb2_grpc.EmbArkStub, text: str, head: str = HEAD) -> Any:
    request = embark_pb2.CategorizeRequest(head=head, input=inputs_pb2.Input(text=text), top_k=3)
    return stub.Categorize(request, timeout=30)


def categorize_plain(stub: embark_pb2_grpc.EmbArkStub, text: str) -> Any:
    return categorize(stub, text, PLAIN)


async def latency(target: str, texts: Sequence[str], call: Call, calls: int) -> dict[str, float]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = embark_pb2_grpc.EmbArkStub(channel)
        picks = [random.choice(texts) for _ in range(calls)]
        for text in picks[:20]:
            await call(stub, text)
        samples, hits = [], 0
        for text in picks:
            started = time.perf_counter()
            reply = await call(stub, text)
            samples.append(time.perf_counter() - started)
            status = reply.embedding.status if hasattr(reply, "embedding") else reply.status
            hits += status == embark_pb2.HIT
    return {**percentiles(samples), "calls": calls, "hit_fraction": hits / calls}


async def throughput(
    target: str, texts: Sequence[str], call: Call, seconds: float, concurrency: int
) -> dict[str, float]:
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    stubs = [embark_pb2_grpc.EmbArkStub(c) for c in channels]
    done = 0
    stop_at = time.perf_counter() + seconds

    async def caller(i: int) -> None:
        nonlocal done
        k = i
        while time.perf_counter() < stop_at:
            await call(stubs[i % len(stubs)], texts[k % len(texts)])
            k += concurrency
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    for c in channels:
        await c.close(None)
    return {"rps": done / elapsed, "calls": done, "concurrency": concurrency}


async def batch(target: str, texts: Sequence[str], size: int, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with grpc.aio.insecure_channel(target) as channel:
        stub = embark_pb2_grpc.EmbArkStub(channel)
        chunks = [texts[i : i + size] for i in range(0, len(texts) - size + 1, size)]

        def embed(chunk: Sequence[str]) -> Any:
            inputs = [inputs_pb2.Input(text=t) for t in chunk]
            return stub.BatchGetEmbeddings(
                embark_pb2.BatchGetEmbeddingsRequest(model=TEXT_MODEL, inputs=inputs), timeout=60
            )

        def cat(chunk: Sequence[str], head: str = HEAD) -> Any:
            inputs = [inputs_pb2.Input(text=t) for t in chunk]
            return stub.BatchCategorize(
                embark_pb2.BatchCategorizeRequest(head=head, inputs=inputs, top_k=3), timeout=60
            )

        def plain(chunk: Sequence[str]) -> Any:
            return cat(chunk, PLAIN)

        calls = (("BatchGetEmbeddings", embed), ("BatchCategorize", cat), (BATCH_PLAIN, plain))
        for name, call in calls:
            await call(chunks[0])
            samples: list[float] = []
            items = 0
            stop_at = time.perf_counter() + seconds
            started = time.perf_counter()
            k = 0
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                await call(chunks[k % len(chunks)])
                samples.append(time.perf_counter() - t0)
                items += size
                k += 1
            out[name] = {
                "inputs_per_s": items / (time.perf_counter() - started),
                "batch": size,
                **{f"call_{k}": v for k, v in percentiles(samples).items()},
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-calls", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    random.seed(7)
    texts = titles(args.keys, prefix="categorize")
    result: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    with tempfile.TemporaryDirectory() as heads, stack("categorize") as s:
        make_head(texts, Path(heads))
        print(f"seeding {len(texts)} vectors into {s.keyspace} ...", flush=True)
        asyncio.run(seed(s.cassandra_config(), texts))
        server = s.start_embark("embark", EMBARK_HEADS_DIR=heads)
        target = f"127.0.0.1:{server.health_port}"

        async def measure() -> None:
            await batch(target, texts, 500, 0.0)  # warms the LRU: every key once
            for name, call in (
                ("GetEmbedding", get_embedding),
                ("Categorize", categorize),
                (ONE_PLAIN, categorize_plain),
            ):
                print(f"{name} ...", flush=True)
                result[name] = {
                    "latency": await latency(target, texts, call, args.latency_calls),
                    "throughput": await throughput(
                        target, texts, call, args.seconds, args.concurrency
                    ),
                }
            print("batches ...", flush=True)
            result.update(await batch(target, texts, args.batch, args.seconds))

        asyncio.run(measure())
    report(result)
    print(f"\nwrote {write_result('categorize', result)}")


def report(result: dict[str, Any]) -> None:
    base = result["GetEmbedding"]
    rows = []
    for name in ("GetEmbedding", "Categorize", ONE_PLAIN):
        if name not in result:
            continue
        r = result[name]
        rows.append(
            [
                name,
                r["latency"]["p50_ms"],
                r["latency"]["p99_ms"],
                r["latency"]["p50_ms"] / base["latency"]["p50_ms"],
                r["throughput"]["rps"],
                r["throughput"]["rps"] / base["throughput"]["rps"],
                r["latency"]["hit_fraction"],
            ]
        )
    print(table(["call", "p50 ms", "p99 ms", "p50 ratio", "calls/s", "calls/s ratio", "hit"], rows))
    embed = result["BatchGetEmbeddings"]
    batch_rows = [
        [name, r["inputs_per_s"], r["inputs_per_s"] / embed["inputs_per_s"], r["call_p50_ms"]]
        for name in ("BatchGetEmbeddings", "BatchCategorize", BATCH_PLAIN)
        if (r := result.get(name))
    ]
    print(table(["batch call", "inputs/s", "ratio", "call p50 ms"], batch_rows))


if __name__ == "__main__":
    main()
