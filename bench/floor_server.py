"""The floor under any Python gRPC front on this box: a grpc.aio server on the loop `embark
serve` uses that answers every GetEmbedding with one prebuilt hit (a real 384-d float32 vector,
the size of EmbArk's answer), and every BatchGetEmbeddings with that many prebuilt hits, and
does nothing else: no key, no cache, no interceptors.

What it costs a call is what grpc.aio and the event loop cost before any of EmbArk's code runs;
``bench/grpc_floor.py`` sets it beside a real hit in one run. ``--guard`` wraps its methods in
EmbArk's error guard, at registration (as EmbArk serves) or through a grpc.aio interceptor
(as it served before): ``bench/guard_cost.py`` compares the three.

    python -m bench.floor_server --port 50072 [--guard none|registration|interceptor]
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import grpc
import numpy as np

from bench.compute_server import serve_until_signal
from embark.server.loop import run
from embark.settings import EventLoop
from embark_api.v1 import embark_pb2, embark_pb2_grpc
from embark_core.interceptors import Guard

DIM = 384
MAX_BATCH = 1024
Guarding = Literal["none", "registration", "interceptor"]


class FloorServicer(embark_pb2_grpc.EmbArkServicer):
    """GetEmbedding and BatchGetEmbeddings answered from prebuilt messages; the other methods
    are the generated base's UNIMPLEMENTED."""

    def __init__(self) -> None:
        vectors = np.random.default_rng(0).standard_normal((MAX_BATCH, DIM)).astype("<f4")
        hits = [
            embark_pb2.Embedding(
                model="minilm-l6",
                revision="r-0000000000000000",
                dim=DIM,
                key=f"{i:032x}",
                status=embark_pb2.HIT,
                vector=v.tobytes(),
            )
            for i, v in enumerate(vectors)
        ]
        self._answer = embark_pb2.GetEmbeddingResponse(embedding=hits[0])
        self._hits = hits
        # One prebuilt response per batch size asked so far: answering costs a dict lookup.
        self._batches: dict[int, embark_pb2.BatchGetEmbeddingsResponse] = {}

    async def GetEmbedding(  # noqa: N802
        self, request: embark_pb2.GetEmbeddingRequest, context: Any
    ) -> embark_pb2.GetEmbeddingResponse:
        return self._answer

    async def BatchGetEmbeddings(  # noqa: N802
        self, request: embark_pb2.BatchGetEmbeddingsRequest, context: Any
    ) -> embark_pb2.BatchGetEmbeddingsResponse:
        n = min(len(request.inputs), MAX_BATCH)
        answer = self._batches.get(n)
        if answer is None:
            answer = self._batches[n] = embark_pb2.BatchGetEmbeddingsResponse(
                embeddings=self._hits[:n]
            )
        return answer


class InterceptedGuard(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """EmbArk's guard applied as it was until it moved to registration: a grpc.aio interceptor
    that grpc asks on every call, returning the method's wrapped handler (built once per
    method, as the interceptor did)."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._guard = Guard(server)
        self._wrapped: dict[str, Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None:
            return handler
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrapped[method] = self._guard.wrap(method, handler)
        return wrapped


async def serve(port: int, guard: Guarding) -> None:
    servicer = FloorServicer()
    if guard == "interceptor":
        # The interceptor wraps with a guard of its own; what it registers on is never used.
        interceptor = InterceptedGuard(grpc.aio.server())
        await serve_until_signal(servicer, port, interceptors=[interceptor])
    else:
        await serve_until_signal(servicer, port, guarded=guard == "registration")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=50072)
    parser.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--guard", choices=("none", "registration", "interceptor"), default="none")
    args = parser.parse_args()
    loop: EventLoop = args.event_loop
    guard: Guarding = args.guard
    run(serve(args.port, guard), loop)


if __name__ == "__main__":
    main()
