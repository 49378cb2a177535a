"""The Python client SDK: ``EmbarkClient`` (blocking) and ``AsyncEmbarkClient`` (asyncio).

    with EmbarkClient("127.0.0.1:50051") as client:
        result = client.get("minilm-l6", text="red running shoes")
        result.status      # "HIT", "PENDING", ...
        result.array()     # numpy float32 vector (the OOV vector unless HIT)

TLS: ``EmbarkClient(target, tls=ClientTls(ca_file=...))``, with ``cert_file``/``key_file`` when
the server requires mutual TLS; ``token=`` adds the bearer token to every call.

Failed calls raise the EmbarkError subclass of their gRPC status (InvalidInput,
UnknownModel, BackendUnavailable, ...), so callers catch domain errors, not grpc ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import grpc
import numpy as np
import numpy.typing as npt

from embark import errors, vectors
from embark.tls import ClientTls, aio_channel
from embark.tls import channel as tls_channel
from embark_api.v1 import embark_pb2, embark_pb2_grpc, inputs_pb2

_CODE_TO_ERROR: dict[grpc.StatusCode, type[errors.EmbarkError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidInput,
        errors.UnknownModel,
        errors.PreconditionFailed,
        errors.Overloaded,
        errors.DeadlineExceeded,
        errors.BackendUnavailable,
    )
}


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    status: str
    model: str
    revision: str
    dim: int
    key: str
    reason: str
    vector: bytes  # little-endian float32; decoded only when asked

    @property
    def hit(self) -> bool:
        return self.status == "HIT"

    def array(self) -> npt.NDArray[np.float32]:
        return vectors.from_bytes(self.vector, self.dim)

    @classmethod
    def from_proto(cls, e: embark_pb2.Embedding) -> EmbeddingResult:
        return cls(
            embark_pb2.Status.Name(e.status),
            e.model,
            e.revision,
            e.dim,
            e.key,
            e.reason,
            e.vector,
        )


@dataclass(frozen=True, slots=True)
class CategorizeResult:
    """A head's answer: ``categories`` (label, probability), best first, only when HIT."""

    status: str
    categories: list[tuple[str, float]]
    model: str
    revision: str
    reason: str

    @property
    def hit(self) -> bool:
        return self.status == "HIT"

    @classmethod
    def from_proto(cls, r: embark_pb2.CategorizeResponse) -> CategorizeResult:
        return cls(
            embark_pb2.Status.Name(r.status),
            [(c.label, c.probability) for c in r.categories],
            r.model,
            r.revision,
            r.reason,
        )


def make_input(*, text: str | None = None, image_url: str | None = None) -> inputs_pb2.Input:
    if text is not None and image_url is None:
        return inputs_pb2.Input(text=text)
    if image_url is not None and text is None:
        return inputs_pb2.Input(image_url=image_url)
    raise errors.InvalidInput("give exactly one of text and image_url")


def _raise(exc: grpc.RpcError) -> errors.EmbarkError:
    # The blocking stub raises a grpc.Call; the asyncio stub an AioRpcError, which is not one.
    if isinstance(exc, grpc.Call | grpc.aio.AioRpcError):
        code, details = exc.code(), exc.details()
    else:
        code, details = grpc.StatusCode.UNKNOWN, str(exc)
    error = _CODE_TO_ERROR.get(code, errors.EmbarkError)(f"{code.name}: {details}")
    error.code = code
    return error


# The server's own default limit (EMBARK_MAX_MESSAGE_BYTES): a full batch of 1024 image
# vectors (1280-d) is 5.2 MB, past gRPC's 4 MiB default.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def _options(max_message_bytes: int) -> tuple[tuple[str, int], ...]:
    return (
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    )


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class EmbarkClient:
    """Blocking client. ``timeout_s`` is each call's deadline; read-through calls should allow
    at least their ``wait_ms``."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout_s: float = 5.0,
        token: str | None = None,
        tls: ClientTls | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._channel = tls_channel(target, tls, _options(max_message_bytes))
        self._stub = embark_pb2_grpc.EmbArkStub(self._channel)
        self._timeout_s = timeout_s
        self._metadata = _metadata(token)

    def get(
        self, model: str, *, text: str | None = None, image_url: str | None = None, wait_ms: int = 0
    ) -> EmbeddingResult:
        request = embark_pb2.GetEmbeddingRequest(
            model=model, input=make_input(text=text, image_url=image_url), wait_ms=wait_ms
        )
        try:
            response = self._stub.GetEmbedding(
                request, timeout=self._timeout_s + wait_ms / 1000, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise _raise(exc) from None
        return EmbeddingResult.from_proto(response.embedding)

    def get_many(
        self, model: str, inputs: Sequence[inputs_pb2.Input], *, wait_ms: int = 0
    ) -> list[EmbeddingResult]:
        request = embark_pb2.BatchGetEmbeddingsRequest(model=model, inputs=inputs, wait_ms=wait_ms)
        try:
            response = self._stub.BatchGetEmbeddings(
                request, timeout=self._timeout_s + wait_ms / 1000, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise _raise(exc) from None
        return [EmbeddingResult.from_proto(e) for e in response.embeddings]

    def categorize(
        self,
        head: str,
        *,
        text: str | None = None,
        image_url: str | None = None,
        top_k: int = 0,
        wait_ms: int = 0,
    ) -> CategorizeResult:
        """Top-k labels of a trained head (0: the server's default, 5) for one input."""
        request = embark_pb2.CategorizeRequest(
            head=head,
            input=make_input(text=text, image_url=image_url),
            top_k=top_k,
            wait_ms=wait_ms,
        )
        try:
            response = self._stub.Categorize(
                request, timeout=self._timeout_s + wait_ms / 1000, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise _raise(exc) from None
        return CategorizeResult.from_proto(response)

    def find_similar(
        self,
        model: str,
        *,
        text: str | None = None,
        image_url: str | None = None,
        key: str | None = None,
        top_k: int = 0,
        min_score: float | None = None,
        wait_ms: int = 0,
    ) -> embark_pb2.FindSimilarResponse:
        """The stored items nearest to an input (or a stored item's ``key``), best first;
        scores are cosines in [-1, 1]. Neighbours only when the status is HIT."""
        request = embark_pb2.FindSimilarRequest(model=model, top_k=top_k, wait_ms=wait_ms)
        if key is not None:
            request.key = key
        else:
            request.input.CopyFrom(make_input(text=text, image_url=image_url))
        if min_score is not None:
            request.min_score = min_score
        try:
            return self._stub.FindSimilar(
                request, timeout=self._timeout_s + wait_ms / 1000, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise _raise(exc) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncEmbarkClient:
    """asyncio client; same calls as EmbarkClient, awaited."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout_s: float = 5.0,
        token: str | None = None,
        tls: ClientTls | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._channel = aio_channel(target, tls, _options(max_message_bytes))
        self._stub = embark_pb2_grpc.EmbArkStub(self._channel)
        self._timeout_s = timeout_s
        self._metadata = _metadata(token)

    async def get(
        self, model: str, *, text: str | None = None, image_url: str | None = None, wait_ms: int = 0
    ) -> EmbeddingResult:
        request = embark_pb2.GetEmbeddingRequest(
            model=model, input=make_input(text=text, image_url=image_url), wait_ms=wait_ms
        )
        try:
            response = await self._stub.GetEmbedding(
                request, timeout=self._timeout_s + wait_ms / 1000, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise _raise(exc) from None
        return EmbeddingResult.from_proto(response.embedding)

    async def get_many(
        self, model: str, inputs: Sequence[inputs_pb2.Input], *, wait_ms: int = 0
    ) -> list[EmbeddingResult]:
        request = embark_pb2.BatchGetEmbeddingsRequest(model=model, inputs=inputs, wait_ms=wait_ms)
        try:
            response = await self._stub.BatchGetEmbeddings(
                request, timeout=self._timeout_s + wait_ms / 1000, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise _raise(exc) from None
        return [EmbeddingResult.from_proto(e) for e in response.embeddings]

    async def categorize(
        self,
        head: str,
        *,
        text: str | None = None,
        image_url: str | None = None,
        top_k: int = 0,
        wait_ms: int = 0,
    ) -> CategorizeResult:
        request = embark_pb2.CategorizeRequest(
            head=head,
            input=make_input(text=text, image_url=image_url),
            top_k=top_k,
            wait_ms=wait_ms,
        )
        try:
            response = await self._stub.Categorize(
                request, timeout=self._timeout_s + wait_ms / 1000, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise _raise(exc) from None
        return CategorizeResult.from_proto(response)

    async def close(self) -> None:
        await self._channel.close(grace=None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
