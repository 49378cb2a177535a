"""Where a hit's time goes: `embark serve` run under cProfile on the real stack (Cassandra,
Kafka, a warm LRU) while it answers ``--calls`` GetEmbedding hits and ``--batches``
BatchGetEmbeddings of 1,024 hits; then its profile grouped by layer, and the top functions.

    .venv/bin/python -m bench.profile_hotpath

Writes bench/results/profile_hotpath.json (the grouped table) and .pstats (the raw profile,
for snakeviz or `python -m pstats`). cProfile slows Python code several times over, so read the
shares, not the absolute times.
"""

from __future__ import annotations

import argparse
import asyncio
import pstats
from collections import defaultdict
from typing import Any

import grpc

from bench.hotpath import warm
from bench.inputs import titles
from bench.stack import (
    RESULTS,
    TEXT_MODEL,
    Proc,
    free_port,
    machine,
    seed,
    stack,
    table,
    write_result,
)
from embark_api.v1 import embark_pb2, embark_pb2_grpc, inputs_pb2

# First match wins: the layer a function's own time is charged to.
_LAYERS = (
    ("start-up (imports, compiling)", ("builtins.compile", "_imp.", "importlib", "<frozen")),
    # grpc.aio's server is Cython coroutines: their own time lands in the Context.run that the
    # event loop calls them through, not in a Python function of their own.
    ("grpc aio server (Cython coroutines, C core)", ("_contextvars.Context", "grpc", "cygrpc")),
    ("embark: keys (canonicalise, hash)", ("embark/keys.py",)),
    ("embark: LRU (store/cached.py)", ("embark/store/cached.py",)),
    ("embark: service (validate, answer, metrics)", ("embark/service.py", "embark/metrics.py")),
    ("embark: servicer + interceptors", ("embark/server/",)),
    ("prometheus_client", ("prometheus_client",)),
    ("protobuf (build, serialise, parse)", ("google/protobuf", "_message", "SerializeToString")),
    ("asyncio event loop", ("asyncio", "selectors", "select.epoll")),
)


def layer(path: str, name: str) -> str:
    where = f"{path}:{name}"
    for label, needles in _LAYERS:
        if any(n in where for n in needles):
            return label
    return "other"


async def drive(target: str, texts: list[str], calls: int, batches: int) -> None:
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    ) as channel:
        stub = embark_pb2_grpc.EmbArkStub(channel)

        async def caller(offset: int) -> None:
            for i in range(offset, calls, 16):
                await stub.GetEmbedding(
                    embark_pb2.GetEmbeddingRequest(
                        model=TEXT_MODEL, input=inputs_pb2.Input(text=texts[i % len(texts)])
                    ),
                    timeout=30,
                )

        await asyncio.gather(*(caller(k) for k in range(16)))
        for b in range(batches):
            start = (b * 1024) % max(1, len(texts) - 1024)
            await stub.BatchGetEmbeddings(
                embark_pb2.BatchGetEmbeddingsRequest(
                    model=TEXT_MODEL,
                    inputs=[inputs_pb2.Input(text=t) for t in texts[start : start + 1024]],
                ),
                timeout=60,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--report-only", action="store_true", help="re-read the last profile")
    args = parser.parse_args()
    texts = titles(args.keys, prefix="profile")
    raw = RESULTS / "profile_hotpath.pstats"
    if not args.report_only:
        record(raw, texts, args)
    report(raw, args)


def record(raw: Any, texts: list[str], args: argparse.Namespace) -> None:
    with stack("profile") as s:
        asyncio.run(seed(s.cassandra_config(), texts))
        port = free_port()
        proc = Proc(
            "embark-profiled",
            ["cProfile", "-o", str(raw), "-m", "embark", "serve"],
            # One process: cProfile sees the process it runs, not spawned workers.
            {**s.backends("EMBARK"), "EMBARK_PORT": str(port), "EMBARK_WORKERS": "1"},
            port,
            s.logs / "embark-profiled.log",
        )
        s.procs.append(proc)
        proc.start()
        target = f"127.0.0.1:{port}"
        asyncio.run(warm(target, texts, 1024))
        asyncio.run(drive(target, texts, args.calls, args.batches))
        proc.stop()  # SIGTERM: a clean exit, so cProfile writes its file


def report(raw: Any, args: argparse.Namespace) -> None:
    stats: Any = pstats.Stats(str(raw))
    own: dict[str, float] = defaultdict(float)
    top = []
    total = 0.0
    for (path, _line, name), (_cc, _nc, tottime, cumtime, _callers) in stats.stats.items():
        own[layer(path, name)] += tottime
        total += tottime
        top.append((tottime, cumtime, f"{path.rsplit('/', 2)[-1] if '/' in path else path}:{name}"))
    # The idle wait in epoll is not work: report shares of the busy time.
    idle = sum(t for t, _, n in top if "poll" in n and "epoll" in n)
    startup = own.pop("start-up (imports, compiling)", 0.0)
    busy = max(total - idle - startup, 1e-9)
    grouped = sorted(
        (
            (label, seconds - (idle if label == "asyncio event loop" else 0.0))
            for label, seconds in own.items()
        ),
        key=lambda item: -item[1],
    )
    top.sort(reverse=True)
    result = {
        "machine": machine(),
        "args": vars(args),
        "busy_s": busy,
        "layers": [{"layer": label, "seconds": sec, "share": sec / busy} for label, sec in grouped],
        "top": [{"function": n, "tottime_s": t, "cumtime_s": c} for t, c, n in top[:25]],
    }
    print("\nembark serve under cProfile: own time by layer (idle epoll wait, start-up excluded)")
    print(
        table(
            ["layer", "seconds", "share"],
            [[g["layer"], g["seconds"], f"{g['share']:.1%}"] for g in result["layers"]],
        )
    )
    print("\ntop functions by own time")
    print(
        table(
            ["function", "own s", "cumulative s"],
            [[t["function"], t["tottime_s"], t["cumtime_s"]] for t in result["top"][:15]],
        )
    )
    print(f"\nwrote {write_result('profile_hotpath', result)} and {raw}")


if __name__ == "__main__":
    main()
