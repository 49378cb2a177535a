"""The HTTP front against gRPC on the same hits, in the same run, from the same process.

One `embark serve` on real Cassandra and Kafka with EMBARK_HTTP_PORT set, its LRU warmed with a
seeded hot set; then, for each door, in turn:
    - latency, one call in flight: gRPC GetEmbedding vs POST /v1/embeddings (float and base64)
      vs POST /embed, one input each;
    - throughput, ``--concurrency`` callers in a closed loop for ``--seconds``;
    - batches of ``--batch`` inputs: vectors/s through BatchGetEmbeddings vs /v1/embeddings.
The client (grpc.aio / aiohttp) runs in this process and shares the cores with the server, as
a co-located caller would; server CPU per call is reported so the comparison does not depend
on how many cores the client took.

    .venv/bin/python -m bench.http_vs_grpc [--seconds 6]

Prints the tables with ratios to gRPC; writes bench/results/http_vs_grpc.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import grpc

from bench.hotpath import warm
from bench.inputs import titles
from bench.stack import (
    TEXT_MODEL,
    cpu_seconds,
    free_port,
    machine,
    percentiles,
    seed,
    stack,
    table,
    write_result,
)
from embark_api.v1 import embark_pb2, embark_pb2_grpc, inputs_pb2

Call = Callable[[Sequence[str]], Awaitable[int]]  # inputs -> HIT count


def grpc_call(stub: embark_pb2_grpc.EmbArkStub) -> Call:
    async def call(texts: Sequence[str]) -> int:
        if len(texts) == 1:
            request = embark_pb2.GetEmbeddingRequest(
                model=TEXT_MODEL, input=inputs_pb2.Input(text=texts[0])
            )
            reply = await stub.GetEmbedding(request, timeout=30)
            return int(reply.embedding.status == embark_pb2.HIT)
        batch = embark_pb2.BatchGetEmbeddingsRequest(
            model=TEXT_MODEL, inputs=[inputs_pb2.Input(text=t) for t in texts]
        )
        replies = await stub.BatchGetEmbeddings(batch, timeout=60)
        return sum(1 for e in replies.embeddings if e.status == embark_pb2.HIT)

    return call


def http_call(session: aiohttp.ClientSession, base: str, route: str, fmt: str) -> Call:
    async def call(texts: Sequence[str]) -> int:
        body = {"model": TEXT_MODEL, "input": list(texts), "encoding_format": fmt}
        async with session.post(f"{base}{route}", data=json.dumps(body)) as response:
            doc = await response.json()
            if response.status != 200:
                raise RuntimeError(f"{response.status}: {doc}")
        if route == "/embed":
            return sum(1 for d in doc["data"] if d["status"] == "HIT")
        return len(doc["data"])  # /v1/embeddings answers 200 only when every item is a HIT

    return call


async def latency(call: Call, texts: Sequence[str], calls: int) -> dict[str, float]:
    for text in texts[:20]:
        await call([text])
    samples, hits = [], 0
    for _ in range(calls):
        started = time.perf_counter()
        hits += await call([random.choice(texts)])
        samples.append(time.perf_counter() - started)
    return {**percentiles(samples), "hit_fraction": hits / calls}


async def throughput(
    call: Call, texts: Sequence[str], *, batch: int, seconds: float, concurrency: int, pid: int
) -> dict[str, float]:
    done = vectors = hits = 0
    samples: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done, vectors, hits
        while time.perf_counter() < stop_at:
            start = random.randrange(0, len(texts) - batch)
            t0 = time.perf_counter()
            got = await call(texts[start : start + batch])  # (`hits += await` would race)
            samples.append(time.perf_counter() - t0)
            hits += got
            done += 1
            vectors += batch

    started, cpu_before = time.perf_counter(), cpu_seconds(pid)
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu_before
    return {
        "calls_per_s": done / elapsed,
        "vectors_per_s": vectors / elapsed,
        "calls_per_server_cpu_s": done / cpu if cpu else float("nan"),
        "hit_fraction": hits / max(1, vectors),
        **{f"loaded_{k}": v for k, v in percentiles(samples).items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=5000, help="seeded hot-set size")
    parser.add_argument("--seconds", type=float, default=6.0, help="per throughput run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-calls", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    random.seed(7)
    texts = titles(args.keys, prefix="httpbench")
    result: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    with stack("http") as s:
        print(f"seeding {len(texts)} vectors into {s.keyspace} ...", flush=True)
        asyncio.run(seed(s.cassandra_config(), texts))
        http_port = free_port()
        embark = s.start_embark("embark-http", EMBARK_HTTP_PORT=str(http_port))
        target, base = f"127.0.0.1:{embark.health_port}", f"http://127.0.0.1:{http_port}"

        async def measure() -> None:
            await warm(target, texts, 1024)
            options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
            connector = aiohttp.TCPConnector(limit=args.concurrency)
            async with (
                grpc.aio.insecure_channel(target, options=options) as channel,
                aiohttp.ClientSession(connector=connector) as session,
            ):
                doors: dict[str, Call] = {
                    "gRPC": grpc_call(embark_pb2_grpc.EmbArkStub(channel)),
                    "HTTP /v1/embeddings float": http_call(
                        session, base, "/v1/embeddings", "float"
                    ),
                    "HTTP /v1/embeddings base64": http_call(
                        session, base, "/v1/embeddings", "base64"
                    ),
                    "HTTP /embed base64": http_call(session, base, "/embed", "base64"),
                }
                for name, call in doors.items():
                    print(f"{name} ...", flush=True)
                    result[name] = {
                        "latency": await latency(call, texts, args.latency_calls),
                        "throughput": await throughput(
                            call, texts, batch=1, seconds=args.seconds,
                            concurrency=args.concurrency, pid=embark.pid,
                        ),
                        "batch": await throughput(
                            call, texts, batch=args.batch, seconds=args.seconds,
                            concurrency=2, pid=embark.pid,
                        ),
                    }  # fmt: skip

        asyncio.run(measure())
    report(result)
    print(f"\nwrote {write_result('http_vs_grpc', result)}")


def report(result: dict[str, Any]) -> None:
    doors = [k for k in result if k.startswith(("gRPC", "HTTP"))]
    grpc_thr = result["gRPC"]["throughput"]
    grpc_batch = result["gRPC"]["batch"]
    rows = []
    for name in doors:
        lat, thr, batch = (result[name][k] for k in ("latency", "throughput", "batch"))
        rows.append(
            [
                name,
                lat["p50_ms"],
                lat["p99_ms"],
                thr["calls_per_s"],
                thr["calls_per_s"] / grpc_thr["calls_per_s"],
                thr["calls_per_server_cpu_s"],
                thr["loaded_p99_ms"],
                batch["vectors_per_s"],
                batch["vectors_per_s"] / grpc_batch["vectors_per_s"],
                min(lat["hit_fraction"], thr["hit_fraction"], batch["hit_fraction"]),
            ]
        )
    args = result["args"]
    print(
        table(
            [
                "door (hits, one input)",
                "p50 ms (1 in flight)",
                "p99 ms",
                f"calls/s ({args['concurrency']} in flight)",
                "x gRPC",
                "calls per server CPU-s",
                "loaded p99 ms",
                f"vectors/s (batch {args['batch']})",
                "x gRPC",
                "hit fraction",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
