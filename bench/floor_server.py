"""The floor under any Python gRPC front on this box: a grpc.aio server on the loop `embark
serve` uses that answers every GetEmbedding with one prebuilt hit (a real 384-d float32 vector,
the size of EmbArk's answer), and every BatchGetEmbeddings with that many prebuilt hits, and
does nothing else: no key, no cache, no interceptors.

What it costs a call is what grpc.aio and the event loop cost before any of EmbArk's code runs;
``bench/grpc_floor.py`` sets it beside a real hit in one run.

    python -m bench.floor_server --port 50072
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from bench.compute_server import serve_until_signal
from embark.server.loop import run
from embark.settings import EventLoop
from embark_api.v1 import embark_pb2, embark_pb2_grpc

DIM = 384
MAX_BATCH = 1024


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=50072)
    parser.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    loop: EventLoop = args.event_loop
    run(serve_until_signal(FloorServicer(), args.port), loop)


if __name__ == "__main__":
    main()
