"""``EmbarkClient`` (blocking) and ``AsyncEmbarkClient`` (asyncio): EmbArk's gRPC API plus the
helpers callers would otherwise each write: ``get_many`` splits batches above the server's
limit (``max_batch``, EMBARK_MAX_BATCH) into several calls and answers in input order, and
``wait_for_hits`` asks again until every item is final (HIT or FAILED) or its deadline passes
(``NotReady``). Failed calls raise the typed error of their status (``from_rpc_error``).

    with EmbarkClient("127.0.0.1:50051") as client:
        result = client.get("minilm-l6", text="red running shoes")
        result.status      # "HIT", "PENDING", ...
        result.array()     # numpy float32 vector (the OOV vector unless HIT)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TypeVar

import grpc

from embark_api.v1 import embark_pb2, embark_pb2_grpc, inputs_pb2
from embark_client._errors import NotReady, from_rpc_error
from embark_client._results import CategorizeResult, EmbeddingResult, dtype_value, make_input
from embark_client._tls import TlsConfig, aio_channel
from embark_client._tls import channel as blocking_channel

# The server's own default limits (EMBARK_MAX_BATCH, EMBARK_MAX_MESSAGE_BYTES): a full batch of
# 1024 image vectors (1280-d) is 5.2 MB, past gRPC's 4 MiB default.
DEFAULT_MAX_BATCH = 1024
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

T = TypeVar("T")
_Self = TypeVar("_Self")


def _options(max_message_bytes: int) -> tuple[tuple[str, int], ...]:
    return (
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    )


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)] or [items]


def _not_ready(results: Sequence[EmbeddingResult], deadline_s: float) -> NotReady:
    waiting = sum(1 for r in results if not r.final)
    return NotReady(f"{waiting} of {len(results)} inputs not ready after {deadline_s} s", results)


class EmbarkClient:
    """Blocking client. ``timeout_s`` is each call's deadline; read-through calls are allowed
    their ``wait_ms`` on top."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout_s: float = 5.0,
        token: str | None = None,
        tls: TlsConfig | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self._channel = blocking_channel(target, tls, _options(max_message_bytes))
        self._stub = embark_pb2_grpc.EmbArkStub(self._channel)
        self._timeout_s = timeout_s
        self._metadata = _metadata(token)
        self._max_batch = max_batch

    def get(
        self,
        model: str,
        *,
        text: str | None = None,
        image_url: str | None = None,
        wait_ms: int = 0,
        dtype: str = "float32",
    ) -> EmbeddingResult:
        request = embark_pb2.GetEmbeddingRequest(
            model=model,
            input=make_input(text=text, image_url=image_url),
            wait_ms=wait_ms,
            dtype=dtype_value(dtype),  # type: ignore[arg-type]
        )
        try:
            response = self._stub.GetEmbedding(
                request, timeout=self._timeout_s + wait_ms / 1000, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return EmbeddingResult.from_proto(response.embedding)

    def get_many(
        self,
        model: str,
        inputs: Sequence[inputs_pb2.Input],
        *,
        wait_ms: int = 0,
        dtype: str = "float32",
    ) -> list[EmbeddingResult]:
        """One result per input, in order; batches above ``max_batch`` go as several calls."""
        results: list[EmbeddingResult] = []
        for chunk in _chunks(inputs, self._max_batch):
            request = embark_pb2.BatchGetEmbeddingsRequest(
                model=model,
                inputs=chunk,
                wait_ms=wait_ms,
                dtype=dtype_value(dtype),  # type: ignore[arg-type]
            )
            try:
                response = self._stub.BatchGetEmbeddings(
                    request, timeout=self._timeout_s + wait_ms / 1000, metadata=self._metadata
                )
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None
            results.extend(EmbeddingResult.from_proto(e) for e in response.embeddings)
        return results

    def wait_for_hits(
        self,
        model: str,
        inputs: Sequence[inputs_pb2.Input],
        *,
        deadline_s: float,
        poll_s: float = 0.2,
        wait_ms: int = 0,
        dtype: str = "float32",
    ) -> list[EmbeddingResult]:
        """Ask until every input is HIT or FAILED; only those not final are asked again.
        Raises NotReady (with the last results) when ``deadline_s`` passes first."""
        give_up = time.monotonic() + deadline_s
        results = self.get_many(model, inputs, wait_ms=wait_ms, dtype=dtype)
        while True:
            waiting = [i for i, r in enumerate(results) if not r.final]
            if not waiting:
                return results
            if time.monotonic() + poll_s > give_up:
                raise _not_ready(results, deadline_s)
            time.sleep(poll_s)
            again = self.get_many(model, [inputs[i] for i in waiting], wait_ms=wait_ms, dtype=dtype)
            for i, result in zip(waiting, again, strict=True):
                results[i] = result

    def categorize(
        self,
        head: str,
        *,
        text: str | None = None,
        image_url: str | None = None,
        top_k: int = 0,
        wait_ms: int = 0,
        min_probability: float = 0.0,
    ) -> CategorizeResult:
        """Top-k labels of a trained head (0: the server's default, 5) for one input; below
        ``min_probability`` the answer is UNCERTAIN (with the candidates)."""
        request = embark_pb2.CategorizeRequest(
            head=head,
            input=make_input(text=text, image_url=image_url),
            top_k=top_k,
            wait_ms=wait_ms,
            min_probability=min_probability,
        )
        try:
            response = self._stub.Categorize(
                request, timeout=self._timeout_s + wait_ms / 1000, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return CategorizeResult.from_proto(response)

    def categorize_many(
        self,
        head: str,
        texts: Sequence[str],
        *,
        top_k: int = 0,
        wait_ms: int = 0,
        min_probability: float = 0.0,
    ) -> list[CategorizeResult]:
        """``categorize`` for many texts in one call (BatchCategorize), answers in order."""
        request = embark_pb2.BatchCategorizeRequest(
            head=head,
            inputs=[make_input(text=t) for t in texts],
            top_k=top_k,
            wait_ms=wait_ms,
            min_probability=min_probability,
        )
        try:
            response = self._stub.BatchCategorize(
                request, timeout=self._timeout_s + wait_ms / 1000, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return [CategorizeResult.from_proto(r) for r in response.results]

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
            response: embark_pb2.FindSimilarResponse = self._stub.FindSimilar(
                request, timeout=self._timeout_s + wait_ms / 1000, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return response

    def list_models(self) -> list[embark_pb2.ModelInfo]:
        """What the server serves: name, kind, dim, revision, precision, parity, ..."""
        try:
            response = self._stub.ListModels(
                embark_pb2.ListModelsRequest(), timeout=self._timeout_s, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return list(response.models)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncEmbarkClient:
    """asyncio client; the same calls as EmbarkClient, awaited."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout_s: float = 5.0,
        token: str | None = None,
        tls: TlsConfig | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self._channel = aio_channel(target, tls, _options(max_message_bytes))
        self._stub = embark_pb2_grpc.EmbArkStub(self._channel)
        self._timeout_s = timeout_s
        self._metadata = _metadata(token)
        self._max_batch = max_batch

    async def get(
        self,
        model: str,
        *,
        text: str | None = None,
        image_url: str | None = None,
        wait_ms: int = 0,
        dtype: str = "float32",
    ) -> EmbeddingResult:
        request = embark_pb2.GetEmbeddingRequest(
            model=model,
            input=make_input(text=text, image_url=image_url),
            wait_ms=wait_ms,
            dtype=dtype_value(dtype),  # type: ignore[arg-type]
        )
        try:
            response = await self._stub.GetEmbedding(
                request, timeout=self._timeout_s + wait_ms / 1000, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return EmbeddingResult.from_proto(response.embedding)

    async def get_many(
        self,
        model: str,
        inputs: Sequence[inputs_pb2.Input],
        *,
        wait_ms: int = 0,
        dtype: str = "float32",
    ) -> list[EmbeddingResult]:
        """One result per input, in order; batches above ``max_batch`` go as several calls,
        in flight together."""

        async def one(chunk: Sequence[inputs_pb2.Input]) -> list[EmbeddingResult]:
            request = embark_pb2.BatchGetEmbeddingsRequest(
                model=model,
                inputs=chunk,
                wait_ms=wait_ms,
                dtype=dtype_value(dtype),  # type: ignore[arg-type]
            )
            try:
                response = await self._stub.BatchGetEmbeddings(
                    request, timeout=self._timeout_s + wait_ms / 1000, metadata=self._metadata
                )
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None
            return [EmbeddingResult.from_proto(e) for e in response.embeddings]

        parts = await asyncio.gather(*(one(c) for c in _chunks(inputs, self._max_batch)))
        return [result for part in parts for result in part]

    async def wait_for_hits(
        self,
        model: str,
        inputs: Sequence[inputs_pb2.Input],
        *,
        deadline_s: float,
        poll_s: float = 0.2,
        wait_ms: int = 0,
        dtype: str = "float32",
    ) -> list[EmbeddingResult]:
        """Ask until every input is HIT or FAILED; NotReady when ``deadline_s`` passes."""
        give_up = time.monotonic() + deadline_s
        results = await self.get_many(model, inputs, wait_ms=wait_ms, dtype=dtype)
        while True:
            waiting = [i for i, r in enumerate(results) if not r.final]
            if not waiting:
                return results
            if time.monotonic() + poll_s > give_up:
                raise _not_ready(results, deadline_s)
            await asyncio.sleep(poll_s)
            again = await self.get_many(
                model, [inputs[i] for i in waiting], wait_ms=wait_ms, dtype=dtype
            )
            for i, result in zip(waiting, again, strict=True):
                results[i] = result

    async def categorize(
        self,
        head: str,
        *,
        text: str | None = None,
        image_url: str | None = None,
        top_k: int = 0,
        wait_ms: int = 0,
        min_probability: float = 0.0,
    ) -> CategorizeResult:
        request = embark_pb2.CategorizeRequest(
            head=head,
            input=make_input(text=text, image_url=image_url),
            top_k=top_k,
            wait_ms=wait_ms,
            min_probability=min_probability,
        )
        try:
            response = await self._stub.Categorize(
                request, timeout=self._timeout_s + wait_ms / 1000, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return CategorizeResult.from_proto(response)

    async def close(self) -> None:
        await self._channel.close(grace=None)

    async def __aenter__(self: _Self) -> _Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
