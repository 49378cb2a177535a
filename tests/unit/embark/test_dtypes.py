"""Output dtypes, converted at response time in one place (``embark.vectors.convert``): sizes,
values and round trips for float16, int8 and binary; the gRPC API (SDK ``dtype=``) and the
HTTP routes (``output_dtype``) answer the same converted bytes."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from embark_client import AsyncEmbarkClient

from embark import vectors
from embark.catalog import Catalog, ModelSpec
from embark.errors import InvalidInput
from embark.heads.service import CategorizeService, HeadRegistry
from embark.http import HttpFront, HttpOptions
from embark.keys import canonical_text, derive_key
from embark.metrics import EmbarkMetrics
from embark.queue.local import LocalBroker, LocalJobQueue
from embark.server.app import Running, start
from embark.service import EmbarkService, Limits
from embark.store.base import StoredVector
from embark.store.sqlite import SqliteConfig, open_sqlite_store
from embark_api.v1 import embark_pb2

Dtype = embark_pb2.Dtype
DIM = 12
UNIT = np.random.default_rng(3).standard_normal(DIM).astype("<f4")
UNIT /= np.linalg.norm(UNIT)
TEXT = ModelSpec(
    name="minilm", kind="text", dim=DIM, revision="r1", oov=vectors.to_bytes([0.1] * DIM, DIM)
)


def test_sizes_and_values() -> None:
    blob = UNIT.tobytes()
    assert vectors.convert(blob, Dtype.DTYPE_FLOAT32) is blob
    half = vectors.convert(blob, Dtype.DTYPE_FLOAT16)
    assert len(half) == 2 * DIM
    np.testing.assert_allclose(vectors.values(half, Dtype.DTYPE_FLOAT16), UNIT, atol=1e-3)
    int8 = vectors.convert(blob, Dtype.DTYPE_INT8)
    assert len(int8) == DIM
    np.testing.assert_array_equal(
        vectors.values(int8, Dtype.DTYPE_INT8), np.rint(UNIT * 127).astype(np.int8)
    )
    bits = vectors.convert(blob, Dtype.DTYPE_BINARY)
    assert len(bits) == 2  # 12 bits -> 2 bytes
    unpacked = np.unpackbits(vectors.values(bits, Dtype.DTYPE_BINARY))[:DIM]
    np.testing.assert_array_equal(unpacked, (UNIT > 0).astype(np.uint8))


def test_int8_clips_and_unknown_dtypes_are_refused() -> None:
    blob = np.asarray([1.5, -2.0, 0.0], "<f4").tobytes()
    assert list(vectors.values(vectors.convert(blob, Dtype.DTYPE_INT8), Dtype.DTYPE_INT8)) == [
        127,
        -127,
        0,
    ]
    answer = embark_pb2.Embedding(vector=blob)
    with pytest.raises(InvalidInput):
        vectors.apply_dtype([answer], 9)


@pytest.fixture
async def fronts(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    store = await open_sqlite_store(SqliteConfig(path=tmp_path / "e.sqlite3"))
    canonical = canonical_text("stored")
    await store.put_many(
        [
            StoredVector(
                derive_key(TEXT.name, TEXT.revision, "text", canonical).digest,
                TEXT.name,
                TEXT.revision,
                "text",
                canonical,
                UNIT.tobytes(),
                DIM,
                1,
            )
        ]
    )
    metrics = EmbarkMetrics()
    service = EmbarkService(
        catalog=Catalog({TEXT.name: TEXT}),
        store=store,
        queue=LocalJobQueue(LocalBroker(10)),
        encoding=None,
        limits=Limits(8, 100, 100, 0.5, 60.0, 100),
        metrics=metrics,
    )
    running: Running = await start(host="127.0.0.1", port=0, max_message_bytes=1 << 20)
    running.servicer.attach(service)
    front = HttpFront(
        HttpOptions(wait_ms=100, retry_after_s=1, max_body_bytes=1 << 16, max_batch=8),
        catalog=service.catalog,
        metrics=metrics,
    )
    port = await front.start("127.0.0.1", 0)
    front.attach(service, CategorizeService(service, HeadRegistry()))
    yield f"127.0.0.1:{running.port}", f"http://127.0.0.1:{port}"
    await front.stop()
    await running.server.stop(None)
    await store.close()


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "binary"])
async def test_grpc_and_http_answer_the_same_converted_bytes(
    fronts: tuple[str, str], dtype: str
) -> None:
    target, base = fronts
    expected = vectors.convert(UNIT.tobytes(), vectors_dtype(dtype))
    async with AsyncEmbarkClient(target) as client:
        result = await client.get(TEXT.name, text="stored", dtype=dtype)
    assert result.dtype == dtype
    assert result.vector == expected
    np.testing.assert_array_equal(result.array(), vectors.values(expected, vectors_dtype(dtype)))
    async with aiohttp.ClientSession() as http:
        body = {"model": TEXT.name, "input": "stored", "output_dtype": dtype}
        async with http.post(f"{base}/v1/embeddings", json=body) as response:
            as_numbers = (await response.json())["data"][0]["embedding"]
        body["encoding_format"] = "base64"
        async with http.post(f"{base}/embed", json=body) as response:
            as_b64 = (await response.json())["data"][0]["embedding"]
    assert base64.b64decode(as_b64) == expected
    np.testing.assert_allclose(
        as_numbers, vectors.values(expected, vectors_dtype(dtype)).astype(np.float64), rtol=1e-6
    )


def vectors_dtype(name: str) -> int:
    return int(Dtype.Value("DTYPE_" + name.upper()))
