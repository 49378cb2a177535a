"""One error table for both ways of reaching Retina: the same fault raised inside Retina becomes
the same EmbArk error (type and retriability) whether Retina runs in-process (`embark dev`) or
behind gRPC (KFC, `embark serve`). Also ``to_rows``, the one conversion of answers into rows."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from embark.catalog import ModelSpec
from embark.encoding import EncodeItem, GrpcEncoding, call_error, to_rows
from embark.errors import (
    BackendUnavailable,
    EmbarkError,
    EncoderFailed,
    InvalidInput,
    Overloaded,
    PreconditionFailed,
    UnknownModel,
)
from embark_api.v1 import inputs_pb2, retina_pb2
from onebox.encoding import InProcessEncoding
from retina import errors as retina_errors
from retina.server import start_test_server
from retina.settings import RetinaSettings

RAISED: list[tuple[retina_errors.RetinaError, type[EmbarkError], bool]] = [
    (retina_errors.UnknownModel("no such model"), UnknownModel, False),
    (retina_errors.RevisionMismatch("r-2 served"), PreconditionFailed, False),
    (retina_errors.InvalidRequest("inputs is empty"), InvalidInput, False),
    (retina_errors.Overloaded("busy"), Overloaded, True),
    (retina_errors.Closing("shutting down"), BackendUnavailable, True),
    (retina_errors.ArtifactError("model not loaded"), PreconditionFailed, False),
    (retina_errors.RetinaError("a bug"), EncoderFailed, False),
]


class Raising:
    """A stand-in RetinaService whose Embed raises the error under test."""

    def __init__(self) -> None:
        self.error: Exception = RuntimeError("unset")

    async def embed(self, request: retina_pb2.EmbedRequest) -> retina_pb2.EmbedResponse:
        raise self.error


@pytest.fixture
async def remote() -> AsyncIterator[tuple[Raising, GrpcEncoding]]:
    fake = Raising()
    server, port = await start_test_server(fake, RetinaSettings())  # type: ignore[arg-type]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield fake, GrpcEncoding(channel, timeout_s=5.0)
    await server.stop(None)


@pytest.mark.parametrize(("raised", "expected", "retriable"), RAISED, ids=lambda v: str(v))
async def test_in_process_and_grpc_classify_a_fault_alike(
    remote: tuple[Raising, GrpcEncoding],
    raised: retina_errors.RetinaError,
    expected: type[EmbarkError],
    retriable: bool,
) -> None:
    fake, grpc_encoding = remote
    fake.error = raised
    in_process = InProcessEncoding(fake)  # type: ignore[arg-type]
    request = retina_pb2.EmbedRequest(model="m", inputs=[inputs_pb2.Input(text="x")])

    seen: list[EmbarkError] = []
    for encoding in (in_process, grpc_encoding):
        with pytest.raises(EmbarkError) as info:
            await encoding.embed(request)
        seen.append(info.value)

    assert [type(e) for e in seen] == [expected, expected]
    assert [e.retriable for e in seen] == [retriable, retriable]


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, BackendUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, BackendUnavailable),
        (grpc.StatusCode.UNAUTHENTICATED, BackendUnavailable),
        (grpc.StatusCode.INTERNAL, EncoderFailed),
        (grpc.StatusCode.UNKNOWN, EncoderFailed),
        (grpc.StatusCode.DATA_LOSS, EncoderFailed),
    ],
)
def test_unnamed_failures_are_not_mistaken_for_outages(
    code: grpc.StatusCode, expected: type[EmbarkError]
) -> None:
    # INTERNAL once meant "Retina unavailable": KFC retried a poisoned batch forever.
    assert type(call_error(code, "x")) is expected


SPEC = ModelSpec(name="m", kind="text", dim=2, revision="r", oov=struct.pack("<2f", 0, 0))


def result(**kind: Any) -> retina_pb2.EmbedResult:
    return retina_pb2.EmbedResult(**kind)


def test_to_rows_sorts_answers_into_vectors_failures_and_retries() -> None:
    items = [EncodeItem(f"k{i}", "text", f"t{i}") for i in range(5)]
    response = retina_pb2.EmbedResponse(
        results=[
            result(vector=struct.pack("<2f", 0.6, 0.8)),
            result(error=retina_pb2.ItemError(reason="too_large", message="big")),
            result(error=retina_pb2.ItemError(reason="http_503", message="x", retriable=True)),
            result(vector=struct.pack("<2f", float("inf"), 0)),
            result(vector=struct.pack("<3f", 1, 0, 0)),
        ]
    )

    rows = to_rows(SPEC, items, response, now_ms=7)

    assert list(rows.vectors) == ["k0"]
    assert (rows.vectors["k0"].input, rows.vectors["k0"].created_at_ms) == ("t0", 7)
    assert {k: f.reason for k, f in rows.failures.items()} == {
        "k1": "too_large",
        "k3": "bad_vector",
        "k4": "bad_vector",
    }
    assert list(rows.transient) == ["k2"]


def test_to_rows_refuses_an_answer_of_the_wrong_length() -> None:
    items = [EncodeItem("k", "text", "t")]
    with pytest.raises(EncoderFailed, match="2 results for 1 inputs"):
        to_rows(SPEC, items, retina_pb2.EmbedResponse(results=[result(), result()]), 0)
