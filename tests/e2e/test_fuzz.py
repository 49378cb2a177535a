"""Hostile input against a running `embark dev` (EmbArk, KFC and the real Retina encoders in one
process, started as a user starts it): hypothesis-generated requests with random strings, huge
and empty fields, invalid UTF-8 and corrupt wire bytes, random model names and random URLs.

Whatever arrives, the answer is a status a client can act on (OK, INVALID_ARGUMENT, NOT_FOUND,
RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, UNAVAILABLE), never INTERNAL or UNKNOWN; the process stays
alive and keeps answering valid requests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.provisional import urls

from embark_api.v1 import embark_pb2, embark_pb2_grpc, inputs_pb2, retina_pb2, retina_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

MODELS = ["minilm-l6", "efficientnet-lite0"]
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
EXAMPLES = 200
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
CALL_TIMEOUT_S = 15.0


@dataclass
class Dev:
    proc: subprocess.Popen[str]
    channel: grpc.Channel
    log: Path
    codes: Counter[str]
    details: dict[str, str]

    @property
    def embark(self) -> embark_pb2_grpc.EmbArkStub:
        return embark_pb2_grpc.EmbArkStub(self.channel)

    def raw(self, method: str) -> grpc.UnaryUnaryMultiCallable:
        return self.channel.unary_unary(method)  # bytes in, bytes out

    def check(self, call: Callable[[], object]) -> None:
        """Run ``call`` and file its status; fail on INTERNAL/UNKNOWN or a dead process."""
        code: grpc.StatusCode | None = None
        details = ""
        try:
            call()
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
        self.codes[code.name if code else "OK"] += 1
        if code is not None:
            self.details.setdefault(code.name, details[:120])
        assert code not in NEVER, f"{code}: {details}"
        assert self.proc.poll() is None, "embark dev died"


@pytest.fixture(scope="module")
def dev(built_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    data = tmp_path_factory.mktemp("fuzz-data")
    log = data / "embark-dev.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "embark", "dev", "--port", "0", "--data-dir", str(data),
             "--artifacts", str(built_artifacts)],
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )  # fmt: skip
    assert proc.stdout is not None
    first = proc.stdout.readline()  # "embark dev listening on HOST:PORT"
    assert "listening on" in first, log.read_text()
    target = first.split()[-1]
    channel = grpc.insecure_channel(target)
    the_dev = Dev(proc, channel, log, Counter(), {})
    try:
        yield the_dev
    finally:
        print(f"\nfuzz answers by status: {dict(the_dev.codes)}; e.g. {the_dev.details}")
        channel.close()
        proc.terminate()
        proc.wait(30)
        proc.stdout.close()
        tail = log.read_text(errors="replace")
        assert "Traceback" not in tail, tail[-4000:]


# --- strategies ------------------------------------------------------------------------------

huge_text = st.integers(4000, 20_000).map(lambda n: "x" * n)
texts = st.one_of(st.text(max_size=200), huge_text, st.just(""), st.sampled_from([" ", "\u200b"]))
model_names = st.one_of(st.sampled_from(MODELS), st.text(max_size=60), st.just("x" * 10_000))
image_urls = st.one_of(
    urls(),
    st.text(max_size=200),
    st.sampled_from(
        [
            "file:///etc/passwd",
            "http://127.0.0.1:1/x.png",
            "http://169.254.169.254/latest/meta-data/",
            "gopher://example.com/",
            "http://[::1]/",
            "http://0x7f.1/",
            "",
        ]
    ),
    st.integers(3000, 10_000).map(lambda n: "http://a.example/" + "a" * n),
)


@st.composite
def an_input(draw: st.DrawFn) -> inputs_pb2.Input:
    which = draw(st.sampled_from(["text", "image_url", "none"]))
    if which == "text":
        return inputs_pb2.Input(text=draw(texts))
    if which == "image_url":
        return inputs_pb2.Input(image_url=draw(image_urls))
    return inputs_pb2.Input()


def _many_inputs(n: int) -> list[inputs_pb2.Input]:
    return [inputs_pb2.Input(text=f"t{i}") for i in range(n)]


wait_ms = st.one_of(st.just(0), st.integers(0, 500), st.integers(-(2**31), 2**31 - 1))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


invalid_utf8 = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])


@st.composite
def bad_utf8_request(draw: st.DrawFn) -> bytes:
    """A GetEmbeddingRequest whose model name or input text is not UTF-8."""
    bad = draw(st.binary(max_size=20)) + draw(invalid_utf8) + draw(st.binary(max_size=20))
    if draw(st.booleans()):
        return _field(1, bad)  # model
    text = _field(1, bad)  # Input.text
    return _field(1, b"minilm-l6") + _field(2, text)


# --- the fuzz tests --------------------------------------------------------------------------


@FUZZ
@given(model=model_names, item=an_input(), wait=wait_ms)
def test_get_embedding_never_internal(
    dev: Dev, model: str, item: inputs_pb2.Input, wait: int
) -> None:
    request = embark_pb2.GetEmbeddingRequest(model=model, input=item, wait_ms=max(0, wait))
    dev.check(lambda: dev.embark.GetEmbedding(request, timeout=CALL_TIMEOUT_S))


@FUZZ
@given(
    data=st.data(),
    model=st.sampled_from(MODELS),
    n=st.integers(1, 6),
    wait=st.integers(0, 300),
)
def test_served_models_with_random_content(
    dev: Dev, data: st.DataObject, model: str, n: int, wait: int
) -> None:
    content = texts if model == "minilm-l6" else image_urls
    field = "text" if model == "minilm-l6" else "image_url"
    items = [inputs_pb2.Input(**{field: data.draw(content)}) for _ in range(n)]
    request = embark_pb2.BatchGetEmbeddingsRequest(model=model, inputs=items, wait_ms=wait)
    dev.check(lambda: dev.embark.BatchGetEmbeddings(request, timeout=CALL_TIMEOUT_S))


@FUZZ
@given(
    model=model_names,
    items=st.one_of(st.lists(an_input(), max_size=8), st.integers(1025, 1100).map(_many_inputs)),
    wait=wait_ms,
)
def test_batch_get_never_internal(
    dev: Dev, model: str, items: list[inputs_pb2.Input], wait: int
) -> None:
    request = embark_pb2.BatchGetEmbeddingsRequest(model=model, inputs=items, wait_ms=max(0, wait))
    dev.check(lambda: dev.embark.BatchGetEmbeddings(request, timeout=CALL_TIMEOUT_S))


@FUZZ
@given(body=st.one_of(st.binary(max_size=2000), bad_utf8_request()))
def test_corrupt_bytes_and_invalid_utf8_never_internal(dev: Dev, body: bytes) -> None:
    for method in (
        "/embark.v1.EmbArk/GetEmbedding",
        "/embark.v1.EmbArk/BatchGetEmbeddings",
        "/retina.v1.Retina/Embed",
    ):
        dev.check(lambda m=method: dev.raw(m)(body, timeout=CALL_TIMEOUT_S))


@FUZZ
@given(model=model_names, items=st.lists(an_input(), max_size=6), revision=st.text(max_size=30))
def test_retina_embed_never_internal(
    dev: Dev, model: str, items: list[inputs_pb2.Input], revision: str
) -> None:
    request = retina_pb2.EmbedRequest(model=model, revision=revision, inputs=items)
    stub = retina_pb2_grpc.RetinaStub(dev.channel)
    dev.check(lambda: stub.Embed(request, timeout=CALL_TIMEOUT_S))


def test_still_alive_and_answering_valid_requests(dev: Dev) -> None:
    text = f"fuzz survivor {time.time_ns()}"
    first = dev.embark.GetEmbedding(
        embark_pb2.GetEmbeddingRequest(model="minilm-l6", input=inputs_pb2.Input(text=text)),
        timeout=CALL_TIMEOUT_S,
    )
    assert first.embedding.status in (embark_pb2.PENDING, embark_pb2.HIT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        again = dev.embark.GetEmbedding(
            embark_pb2.GetEmbeddingRequest(model="minilm-l6", input=inputs_pb2.Input(text=text)),
            timeout=CALL_TIMEOUT_S,
        )
        if again.embedding.status == embark_pb2.HIT:
            break
        time.sleep(0.2)
    else:
        pytest.fail("a valid miss never became a HIT after the fuzzing")
    assert dev.proc.poll() is None
