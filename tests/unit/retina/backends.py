"""What the tests of the text backends beside onnxruntime (OpenVINO, native) share: MiniLM-L6
built for a backend from the installed registry weights, and served over real gRPC on loopback
(concurrent one-text Embed calls, which Retina merges into micro-batches) beside the vector
each text gets alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt

from embark_api.v1 import inputs_pb2, retina_pb2, retina_pb2_grpc
from retina.artifacts.base import BuildReport
from retina.artifacts.definition import load_definitions
from retina.artifacts.text import PARITY_SENTENCES, TextBuilder
from retina.artifacts.text_source import text_builder
from retina.encoders import text
from retina.server import start_test_server
from retina.service import RetinaService
from retina.settings import RetinaSettings

F32 = npt.NDArray[np.float32]
# Texts of 3 to 74 tokens, the empty text (an item error) and a code-like one.
TEXTS = (*PARITY_SENTENCES[:24], "", "SKU 00012345-XL-BLK")
EMPTY = TEXTS.index("")


def builder(backend: str, name: str, model: str = "minilm-l6") -> TextBuilder:
    """The catalog's ``model``, built for ``backend`` under ``name``."""
    entry = load_definitions()[model]
    definition = entry.definition.model_copy(update={"backend": backend})
    return text_builder(entry.model_copy(update={"definition": definition, "name": name}))


def build(backend: str, name: str, out: Path) -> tuple[Path, BuildReport]:
    """MiniLM-L6 built for ``backend`` into ``out`` (gated, as any build)."""
    b = builder(backend, name)
    b.latency_runs = 3  # reported, not asserted
    return out, b.build(out)


async def served_beside_alone(
    encoder: text.TextEncoder, name: str
) -> tuple[str, list[tuple[F32, F32]]]:
    """Sends every text of TEXTS at once, one Embed call each, to a Retina serving ``encoder``
    as ``name``. Returns the empty text's error reason, and for every other text the vector
    served and the vector ``encoder`` gives it alone."""
    settings = RetinaSettings(batch_max_wait_ms=20, infer_chunk_items=32)
    service = RetinaService({name: encoder}, settings)
    server, port = await start_test_server(service, settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = retina_pb2_grpc.RetinaStub(channel)
            responses = await asyncio.gather(
                *(
                    stub.Embed(
                        retina_pb2.EmbedRequest(model=name, inputs=[inputs_pb2.Input(text=t)])
                    )
                    for t in TEXTS
                )
            )
    finally:
        await server.stop(None)
        await service.close()
    pairs = [
        (
            np.frombuffer(r.results[0].vector, dtype="<f4"),
            encoder.infer([encoder.preprocess(t)])[0],
        )
        for i, (t, r) in enumerate(zip(TEXTS, responses, strict=True))
        if i != EMPTY
    ]
    return responses[EMPTY].results[0].error.reason, pairs
