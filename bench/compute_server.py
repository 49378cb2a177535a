"""The alternative users would run without EmbArk: a gRPC endpoint that encodes every request.

It serves EmbArk's own API (``GetEmbedding``, ``BatchGetEmbeddings``), so the same client and
the same Locust user drive both, and it encodes with the very encoder Retina serves (the int8
MiniLM-L6 loaded by ``retina.artifacts.build.load_encoders``, through ``RetinaService`` with
its default 2 inference threads): the comparison is cache against compute, nothing else.

    python -m bench.compute_server --port 50071
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from embark.server.app import wait_for_signal
from embark_api.v1 import embark_pb2, embark_pb2_grpc, retina_pb2
from embark_core.interceptors import Guard
from retina.artifacts.build import load_encoders
from retina.service import RetinaService
from retina.settings import RetinaSettings

MODEL = "minilm-l6"


class ComputeServicer(embark_pb2_grpc.EmbArkServicer):
    def __init__(self, service: RetinaService) -> None:
        self._service = service

    async def _encode(self, model: str, inputs: Any) -> list[embark_pb2.Embedding]:
        response = await self._service.embed(retina_pb2.EmbedRequest(model=model, inputs=inputs))
        return [
            embark_pb2.Embedding(
                model=model,
                revision=response.revision,
                dim=response.dim,
                status=embark_pb2.HIT,
                vector=result.vector,
            )
            for result in response.results
        ]

    async def GetEmbedding(  # noqa: N802
        self, request: embark_pb2.GetEmbeddingRequest, context: Any
    ) -> embark_pb2.GetEmbeddingResponse:
        [answer] = await self._encode(request.model, [request.input])
        return embark_pb2.GetEmbeddingResponse(embedding=answer)

    async def Categorize(  # noqa: N802
        self, request: embark_pb2.CategorizeRequest, context: Any
    ) -> embark_pb2.CategorizeResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of the comparison")
        raise AssertionError("unreachable")

    async def BatchGetEmbeddings(  # noqa: N802
        self, request: embark_pb2.BatchGetEmbeddingsRequest, context: Any
    ) -> embark_pb2.BatchGetEmbeddingsResponse:
        return embark_pb2.BatchGetEmbeddingsResponse(
            embeddings=await self._encode(request.model, request.inputs)
        )


async def serve(port: int) -> None:
    settings = RetinaSettings(
        artifacts_dir=Path(os.environ.get("RETINA_ARTIFACTS_DIR", "artifacts")),
        models=(MODEL,),
        max_pending_calls=4096,  # queue rather than refuse: we measure compute, not shedding
    )
    encoders = await asyncio.to_thread(load_encoders, settings.artifacts_dir, settings)
    service = RetinaService(encoders, settings)
    try:
        await serve_until_signal(ComputeServicer(service), port)
    finally:
        await service.close()


async def serve_until_signal(
    servicer: embark_pb2_grpc.EmbArkServicer,
    port: int,
    *,
    interceptors: Sequence[Any] = (),
    guarded: bool = False,
) -> None:
    """Serve EmbArk's API with ``servicer`` and health on loopback ``port`` until SIGTERM or
    SIGINT: a bare grpc.aio server (no interceptors, unless given; ``guarded``: registered
    through EmbArk's guard), shared by the bench's own servers."""
    server = grpc.aio.server(interceptors=list(interceptors) or None)
    target = Guard(server).target if guarded else server
    embark_pb2_grpc.add_EmbArkServicer_to_server(servicer, target)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        await wait_for_signal()
    finally:
        await server.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=50071)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
