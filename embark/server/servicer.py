"""The EmbArk gRPC servicer: protobuf in, EmbarkService, protobuf out. No logic lives here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from embark import vectors
from embark.catalog import Catalog
from embark.errors import BackendUnavailable, PreconditionFailed
from embark.heads.service import CategorizeService, HeadRegistry
from embark.service import EmbarkService
from embark.similar.service import SimilarService
from embark_api.v1 import embark_pb2, embark_pb2_grpc

if TYPE_CHECKING:  # grpc-stubs generics; the runtime class is not subscriptable
    Context = grpc.aio.ServicerContext[Any, Any]


class EmbarkServicer(embark_pb2_grpc.EmbArkServicer):
    """Serves once ``attach`` gave it a service; until then (backends still connecting) every
    call is UNAVAILABLE, and health says NOT_SERVING."""

    def __init__(self, service: EmbarkService | None = None) -> None:
        self._ready = service
        self._categorizer: CategorizeService | None = None
        self._similar: SimilarService | None = None

    def attach(
        self,
        service: EmbarkService,
        categorizer: CategorizeService | None = None,
        similar: SimilarService | None = None,
    ) -> None:
        """Start serving ``service``; Categorize is served by ``categorizer`` (no heads: every
        head is NOT_FOUND), FindSimilar by ``similar`` (none: FAILED_PRECONDITION)."""
        self._categorizer = categorizer or CategorizeService(service, HeadRegistry())
        self._similar = similar
        self._ready = service

    @property
    def _service(self) -> EmbarkService:
        if self._ready is None:
            raise BackendUnavailable("EmbArk is starting: its backends are not reachable yet")
        return self._ready

    async def GetEmbedding(  # noqa: N802 (gRPC method name)
        self, request: embark_pb2.GetEmbeddingRequest, context: Context
    ) -> embark_pb2.GetEmbeddingResponse:
        service = self._service
        left = _Deadline(context)
        with service.admit(left.remaining):
            [answer] = await service.get_many(
                request.model,
                [request.input],
                left.wait_ms(request.wait_ms),
                budget_s=left.budget_s,
            )
        vectors.apply_dtype([answer], request.dtype)
        return embark_pb2.GetEmbeddingResponse(embedding=answer)

    async def BatchGetEmbeddings(  # noqa: N802
        self, request: embark_pb2.BatchGetEmbeddingsRequest, context: Context
    ) -> embark_pb2.BatchGetEmbeddingsResponse:
        service = self._service
        left = _Deadline(context)
        with service.admit(left.remaining):
            answers = await service.get_many(
                request.model, request.inputs, left.wait_ms(request.wait_ms), budget_s=left.budget_s
            )
        vectors.apply_dtype(answers, request.dtype)
        return embark_pb2.BatchGetEmbeddingsResponse(embeddings=answers)

    async def Categorize(  # noqa: N802
        self, request: embark_pb2.CategorizeRequest, context: Context
    ) -> embark_pb2.CategorizeResponse:
        service = self._service
        assert self._categorizer is not None  # set by attach, with the service
        left = _Deadline(context)
        with service.admit(left.remaining):
            return await self._categorizer.categorize(
                request.head,
                request.input,
                k=request.top_k,
                wait_ms=left.wait_ms(request.wait_ms),
                budget_s=left.budget_s,
                min_probability=request.min_probability,
            )

    async def BatchCategorize(  # noqa: N802
        self, request: embark_pb2.BatchCategorizeRequest, context: Context
    ) -> embark_pb2.BatchCategorizeResponse:
        service = self._service
        assert self._categorizer is not None  # set by attach, with the service
        left = _Deadline(context)
        with service.admit(left.remaining):
            results = await self._categorizer.categorize_many(
                request.head,
                request.inputs,
                k=request.top_k,
                wait_ms=left.wait_ms(request.wait_ms),
                budget_s=left.budget_s,
                min_probability=request.min_probability,
            )
        return embark_pb2.BatchCategorizeResponse(results=results)

    async def ListModels(  # noqa: N802
        self, request: embark_pb2.ListModelsRequest, context: Context
    ) -> embark_pb2.ListModelsResponse:
        service = self._service
        return list_models(service.catalog, read_through=service.read_through)

    async def FindSimilar(  # noqa: N802
        self, request: embark_pb2.FindSimilarRequest, context: Context
    ) -> embark_pb2.FindSimilarResponse:
        service = self._service
        if self._similar is None:
            raise PreconditionFailed(
                "similarity search is off: set EMBARK_STORE__SIMILARITY_SEARCH=true"
            )
        left = _Deadline(context)
        with service.admit(left.remaining):
            return await self._similar.find_similar(
                request, wait_ms=left.wait_ms(request.wait_ms), budget_s=left.budget_s
            )


def list_models(catalog: Catalog, *, read_through: bool) -> embark_pb2.ListModelsResponse:
    """The catalog as ListModels answers it: built models by name, then those only defined."""
    built = [
        embark_pb2.ModelInfo(
            name=spec.name,
            kind=spec.kind,
            dim=spec.dim,
            revision=spec.revision,
            precision=spec.precision,
            parity=spec.parity or 0.0,
            dtype=spec.dtype,
            dimensions=spec.dimensions or 0,
            fold_case=spec.fold_case,
            read_through=read_through,
            built=True,
        )
        for spec in sorted(catalog.values(), key=lambda s: s.name)
    ]
    defined = [embark_pb2.ModelInfo(name=n, built=False) for n in sorted(catalog.defined)]
    return embark_pb2.ListModelsResponse(models=[*built, *defined])


class _Deadline:
    """The caller's deadline, read once per call (``time_remaining`` is a call into grpc's C
    core; it was read three times per call before)."""

    __slots__ = ("budget_s", "remaining")

    def __init__(self, context: Context) -> None:
        remaining: float | None = context.time_remaining()
        # Seconds left of the caller's deadline (None: no deadline); 0 once it cancelled.
        self.remaining = 0.0 if context.cancelled() else remaining
        # The store read's share of what the deadline leaves: half, so a degraded answer (OOV
        # + UNAVAILABLE) still reaches the caller in time.
        self.budget_s = None if remaining is None else remaining * 0.5

    def wait_ms(self, wait_ms: int) -> int:
        """Never wait past the caller's own deadline: keep 20% of what remains for the answer."""
        remaining = self.remaining
        if wait_ms and remaining is not None:
            return max(0, min(wait_ms, int(remaining * 1000 * 0.8)))
        return wait_ms
