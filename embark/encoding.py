"""How EmbArk and KFC reach the encoders, and what they make of the answers.

- ``Encoding``: one small Protocol, satisfied in-process by ``onebox.encoding.InProcessEncoding``
  (over ``retina.service.RetinaService``; embark never imports retina) and over the network by
  ``GrpcEncoding``.
- ``call_error``: THE table from the status of a failed Embed call to the error EmbArk and KFC
  act on. Both encodings use it, so the in-process and the gRPC Retina can never disagree.
- ``to_rows``: THE conversion of an Embed answer into archive rows: vectors (checked for size
  and finiteness), permanent failure records, and the items whose fault may pass. EmbArk's
  read-through and KFC both call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from embark import vectors
from embark.catalog import ModelSpec
from embark.errors import (
    BackendUnavailable,
    EmbarkError,
    EncoderFailed,
    InvalidInput,
    Overloaded,
    PreconditionFailed,
    UnknownModel,
)
from embark.keys import InputKind
from embark.store.base import FailureRecord, StoredVector
from embark_api.v1 import inputs_pb2, retina_pb2, retina_pb2_grpc

# Options for every channel to Retina. A restarted Retina is used again within 5 s: gRPC's
# default reconnect backoff grows to 120 s, which would leave KFC (and read-through) idle for
# minutes after a short Retina outage.
RETINA_CHANNEL_OPTIONS: tuple[tuple[str, int | str], ...] = (
    ("grpc.max_reconnect_backoff_ms", 5000),
    # gRPC's default (pick_first) sends every call to the first address a name resolves to;
    # with several Retina instances behind one DNS name that pins each caller to one of them.
    ("grpc.lb_policy_name", "round_robin"),
)


class Encoding(Protocol):
    async def embed(self, request: retina_pb2.EmbedRequest) -> retina_pb2.EmbedResponse:
        """Encode one model batch. Everything about one input comes back in its slot; a failure
        of the whole call raises the error ``call_error`` maps its status to."""
        ...


# The status of a failed Embed call -> what callers do about it. Backend-level (retriable: KFC
# backs the whole batch off and commits nothing): Retina unreachable, overloaded, shutting
# down, or refusing our credentials (every call would fail alike). Permanent for the call: the
# model or revision is not served, the call is malformed. Anything else (INTERNAL, UNKNOWN,
# ...) is EncoderFailed: Retina failed for a reason it did not name, which may be one poison
# input, so KFC tries the call's items alone rather than retrying the call forever.
_CALL_ERRORS: dict[grpc.StatusCode, type[EmbarkError]] = {
    grpc.StatusCode.NOT_FOUND: UnknownModel,
    grpc.StatusCode.FAILED_PRECONDITION: PreconditionFailed,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: BackendUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: BackendUnavailable,
    grpc.StatusCode.CANCELLED: BackendUnavailable,
    grpc.StatusCode.ABORTED: BackendUnavailable,
    grpc.StatusCode.UNAUTHENTICATED: BackendUnavailable,
    grpc.StatusCode.PERMISSION_DENIED: BackendUnavailable,
}


def call_error(code: grpc.StatusCode, message: str) -> EmbarkError:
    """The error a failed Embed call with status ``code`` means to EmbArk and KFC."""
    return _CALL_ERRORS.get(code, EncoderFailed)(f"retina: {code.name}: {message}")


class GrpcEncoding:
    """Encoding over a Retina gRPC channel."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout_s: float) -> None:
        self._stub = retina_pb2_grpc.RetinaStub(channel)
        self._timeout_s = timeout_s

    async def embed(self, request: retina_pb2.EmbedRequest) -> retina_pb2.EmbedResponse:
        try:
            response: retina_pb2.EmbedResponse = await self._stub.Embed(
                request, timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise call_error(exc.code(), exc.details() or "") from None
        return response


@dataclass(frozen=True, slots=True)
class EncodeItem:
    """One input sent to Retina: its cache key and its canonical form."""

    key: str
    kind: InputKind
    canonical: str

    def to_input(self) -> inputs_pb2.Input:
        return to_input(self.kind, self.canonical)

    def failure(self, spec: ModelSpec, reason: str, message: str, now_ms: int) -> FailureRecord:
        """This item's failure record (FAILED until the record's TTL)."""
        return FailureRecord(self.key, spec.name, spec.revision, reason, message, now_ms)


@dataclass(slots=True)
class Rows:
    """An Embed answer as archive rows, by cache key. ``transient`` holds the failures that may
    pass (an image host's 503): not written, the caller retries those items."""

    vectors: dict[str, StoredVector] = field(default_factory=dict)
    failures: dict[str, FailureRecord] = field(default_factory=dict)
    transient: dict[str, FailureRecord] = field(default_factory=dict)

    @classmethod
    def merged(cls, parts: Sequence[Rows]) -> Rows:
        """The rows of several Embed calls as one."""
        merged = cls()
        for rows in parts:
            merged.vectors.update(rows.vectors)
            merged.failures.update(rows.failures)
            merged.transient.update(rows.transient)
        return merged


def to_rows(
    spec: ModelSpec,
    items: Sequence[EncodeItem],
    response: retina_pb2.EmbedResponse,
    now_ms: int,
) -> Rows:
    """Turn Retina's answer for ``items`` (in request order) into rows. A vector of the wrong
    size or with non-finite values is refused (a permanent ``bad_vector`` failure): it would be
    served for the whole TTL. An answer with the wrong number of results is Retina's fault, not
    the items': EncoderFailed."""
    if len(response.results) != len(items):
        raise EncoderFailed(
            f"retina answered {len(response.results)} results for {len(items)} inputs"
        )
    rows = Rows()
    for item, result in zip(items, response.results, strict=True):
        if result.WhichOneof("result") != "vector":
            error = result.error
            bucket = rows.transient if error.retriable else rows.failures
            bucket[item.key] = item.failure(
                spec, error.reason or "encode_failed", error.message, now_ms
            )
            continue
        try:
            vectors.validate(result.vector, spec.dim)
        except vectors.DimensionMismatch as exc:
            rows.failures[item.key] = item.failure(spec, "bad_vector", exc.message, now_ms)
            continue
        rows.vectors[item.key] = StoredVector(
            item.key,
            spec.name,
            spec.revision,
            item.kind,
            item.canonical,
            result.vector,
            spec.dim,
            now_ms,
        )
    return rows


def to_input(kind: InputKind, canonical: str) -> inputs_pb2.Input:
    """The protobuf input for a canonical text or image URL."""
    if kind == "text":
        return inputs_pb2.Input(text=canonical)
    return inputs_pb2.Input(image_url=canonical)
