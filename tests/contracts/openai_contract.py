"""What an OpenAI client sees of EmbArk's HTTP front, whatever runs behind it: the same tests
against `embark dev` (tests/e2e/test_http_openai.py) and against `embark serve` + KFC + Retina
on real Cassandra and Kafka (tests/integration/test_http_stack.py).

A test module subclasses ``OpenAIContract`` and provides a ``front`` fixture (a ``Front``: the
HTTP base URL, the gRPC target and a base URL serving ``coffee.png`` and ``missing.png``). All
calls use the real ``openai`` package; every check compares with what gRPC answers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
import openai
import pytest

from embark.client import EmbarkClient, make_input

TEXT_MODEL = "minilm-l6"
IMAGE_MODEL = "efficientnet-lite0"
# Read-through on two shared cores: a cold first encode can take seconds.
SDK_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Front:
    http: str  # http://127.0.0.1:PORT
    grpc: str  # 127.0.0.1:PORT
    images: str  # http://127.0.0.1:PORT serving coffee.png


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def unique(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:10]}"


class OpenAIContract:
    @pytest.fixture
    def sdk(self, front: Front) -> openai.OpenAI:
        # The SDK's own retries are what a user gets; 8 covers KFC's miss-to-stored time.
        return openai.OpenAI(
            base_url=f"{front.http}/v1", api_key="unused", max_retries=8, timeout=SDK_TIMEOUT_S
        )

    @pytest.fixture
    def grpc_client(self, front: Front) -> EmbarkClient:
        return EmbarkClient(front.grpc, timeout_s=SDK_TIMEOUT_S)

    def grpc_vectors(
        self, client: EmbarkClient, model: str, items: list[str], *, image: bool = False
    ) -> list[np.ndarray]:
        inputs = [make_input(image_url=i) if image else make_input(text=i) for i in items]
        results = client.get_many(model, inputs, wait_ms=30_000)
        assert [r.status for r in results] == ["HIT"] * len(items), results
        return [r.array() for r in results]

    def test_first_call_within_the_deadline_equals_grpc(
        self, sdk: openai.OpenAI, grpc_client: EmbarkClient
    ) -> None:
        texts = [unique("waterproof hiking boots"), unique("espresso machine")]
        raw = sdk.embeddings.with_raw_response.create(model=TEXT_MODEL, input=texts)
        assert raw.retries_taken == 0  # read through within the deadline, no 503
        assert raw.headers["X-EmbArk-Hits"] == ""  # neither was in the archive
        http = [np.asarray(d.embedding, np.float32) for d in raw.parse().data]
        theirs_all = self.grpc_vectors(grpc_client, TEXT_MODEL, texts)
        for mine, theirs in zip(http, theirs_all, strict=True):
            assert cosine(mine, theirs) >= 0.9999
        # Now both are archive hits, through either API.
        again = sdk.embeddings.with_raw_response.create(model=TEXT_MODEL, input=texts)
        assert again.headers["X-EmbArk-Hits"] == "0-1"

    def test_grpc_read_through_then_http_hit(
        self, sdk: openai.OpenAI, grpc_client: EmbarkClient
    ) -> None:
        text = unique("stainless steel kettle")
        [theirs] = self.grpc_vectors(grpc_client, TEXT_MODEL, [text])
        raw = sdk.embeddings.with_raw_response.create(
            model=TEXT_MODEL, input=text, encoding_format="float"
        )
        assert raw.headers["X-EmbArk-Hits"] == "0"
        assert cosine(np.asarray(raw.parse().data[0].embedding), theirs) >= 0.9999

    def test_past_the_deadline_503_then_the_sdks_retry_succeeds(
        self, front: Front, sdk: openai.OpenAI, grpc_client: EmbarkClient
    ) -> None:
        texts = [unique("cordless drill"), unique("garden hose")]
        # Deadline 0: nothing is computed within it, so the first answer is 503 + Retry-After.
        no_retry = sdk.with_options(max_retries=0)
        with pytest.raises(openai.InternalServerError) as first:
            no_retry.embeddings.create(
                model=TEXT_MODEL, input=texts, extra_headers={"X-EmbArk-Wait-Ms": "0"}
            )
        assert first.value.status_code == 503
        assert first.value.response.headers["Retry-After"]
        assert first.value.code == "not_ready"
        # The same call with the SDK's own retries: KFC stores the queued misses meanwhile.
        texts2 = [unique("cordless drill"), unique("garden hose")]
        raw = sdk.embeddings.with_raw_response.create(
            model=TEXT_MODEL, input=texts2, extra_headers={"X-EmbArk-Wait-Ms": "0"}
        )
        assert raw.retries_taken >= 1
        assert raw.headers["X-EmbArk-Hits"] == "0-1"  # answered from the archive
        http = [np.asarray(d.embedding, np.float32) for d in raw.parse().data]
        theirs_all = self.grpc_vectors(grpc_client, TEXT_MODEL, texts2)
        for mine, theirs in zip(http, theirs_all, strict=True):
            assert cosine(mine, theirs) >= 0.9999

    def test_image_urls_for_image_models(
        self, front: Front, sdk: openai.OpenAI, grpc_client: EmbarkClient
    ) -> None:
        url = f"{front.images}/coffee.png?v={uuid.uuid4().hex[:8]}"
        result = sdk.embeddings.create(model=IMAGE_MODEL, input=[url])
        mine = np.asarray(result.data[0].embedding, np.float32)
        assert mine.shape == (1280,)
        [theirs] = self.grpc_vectors(grpc_client, IMAGE_MODEL, [url], image=True)
        assert cosine(mine, theirs) >= 0.9999
        with pytest.raises(openai.UnprocessableEntityError) as failed:
            sdk.embeddings.create(model=IMAGE_MODEL, input=[url, f"{front.images}/missing.png"])
        assert failed.value.code == "input_failed"
        assert "input 1" in failed.value.message

    def test_output_dtypes_on_both_apis(
        self, sdk: openai.OpenAI, grpc_client: EmbarkClient
    ) -> None:
        text = unique("noise cancelling headphones")
        [full] = self.grpc_vectors(grpc_client, TEXT_MODEL, [text])

        def over_http(dtype: str) -> np.ndarray:
            # encoding_format="float": the SDK would decode base64 as float32 by itself.
            result = sdk.embeddings.create(
                model=TEXT_MODEL,
                input=text,
                encoding_format="float",
                extra_body={"output_dtype": dtype},
            )
            return np.asarray(result.data[0].embedding)

        assert cosine(over_http("float16"), full) >= 0.9999
        int8 = over_http("int8")
        # The SDK types embeddings as floats; the values are int8's integers.
        np.testing.assert_array_equal(int8, np.rint(int8))
        assert np.abs(int8).max() <= 127
        # A fixed step of 1/127 on a 384-d unit vector (components ~0.05): rounding noise of
        # std 0.0023 a component, so the expected cosine is about 1 - 0.5 * 0.045**2 = 0.999,
        # varying with the text around it; 0.998 is the bound that does not flake.
        assert cosine(int8, full) >= 0.998
        bits = np.unpackbits(over_http("binary").astype(np.uint8))[: full.size]
        np.testing.assert_array_equal(bits, (full > 0).astype(np.uint8))
        over_grpc = grpc_client.get(TEXT_MODEL, text=text, dtype="int8")
        assert over_grpc.dtype == "int8"
        np.testing.assert_array_equal(over_grpc.array(), int8)

    def test_models_are_listed(self, sdk: openai.OpenAI) -> None:
        ids = {m.id for m in sdk.models.list().data}
        assert {TEXT_MODEL, IMAGE_MODEL} <= ids

    @pytest.mark.parametrize(
        ("kwargs", "error", "code"),
        [
            ({"model": "text-embedding-3-small", "input": "x"}, openai.NotFoundError,
             "model_not_found"),
            ({"model": TEXT_MODEL, "input": [[101, 2023]]}, openai.BadRequestError,
             "invalid_input"),
            ({"model": TEXT_MODEL, "input": []}, openai.BadRequestError, "invalid_argument"),
            ({"model": TEXT_MODEL, "input": "x", "dimensions": 256}, openai.BadRequestError,
             "unsupported_dimensions"),
            ({"model": TEXT_MODEL, "input": "x" * 5000}, openai.BadRequestError,
             "invalid_argument"),
            ({"model": IMAGE_MODEL, "input": "ftp://example.com/a.png"}, openai.BadRequestError,
             "invalid_argument"),
        ],
    )  # fmt: skip
    def test_bad_inputs_are_openai_shaped_4xx(
        self, sdk: openai.OpenAI, kwargs: dict[str, object], error: type[Exception], code: str
    ) -> None:
        with pytest.raises(error) as info:
            sdk.embeddings.create(**kwargs)  # type: ignore[call-overload]
        assert getattr(info.value, "code", None) == code
