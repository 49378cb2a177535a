"""The HTTP route handlers: JSON in, ``EmbarkService`` (the same one gRPC serves), JSON out.

``/v1/embeddings`` never answers an OOV vector: an OpenAI client cannot tell one from a real
vector. It reads through within a deadline; every item a HIT is a 200; an item that failed for
good is a 422 naming it; anything else (not computed in time, archive or queue trouble) is a
503 with Retry-After, by when KFC has usually written the vector, and the openai SDK retries a
503 by itself. The native ``/embed`` answers like gRPC: every item with its own status.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from embark import vectors
from embark.catalog import Catalog
from embark.errors import BackendUnavailable, InvalidInput, PreconditionFailed
from embark.heads.service import CategorizeService
from embark.http.errors import HttpError, retry_after_headers
from embark.http.schemas import (
    DTYPES,
    CategorizeRequest,
    EmbeddingsRequest,
    EmbedRequest,
    SimilarRequest,
    as_list,
    categorize_document,
    embed_document,
    embeddings_document,
    index_ranges,
    models_document,
    parse,
    resolve_dimensions,
    similar_document,
    to_inputs,
)
from embark.metrics import EmbarkMetrics
from embark.service import EmbarkService
from embark.similar.service import SimilarService
from embark_api.v1 import embark_pb2

_HIT, _FAILED = embark_pb2.Status.HIT, embark_pb2.Status.FAILED

#: Items the archive answered (before any read-through), as index ranges: ``0-3,7``.
HITS_HEADER = "X-EmbArk-Hits"
#: A client may shorten (never lengthen) the server's read-through deadline for one call.
WAIT_HEADER = "X-EmbArk-Wait-Ms"


class Routes:
    """The handlers, with what they share: the service once attached, and the options."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        metrics: EmbarkMetrics,
        wait_ms: int,
        retry_after_s: float,
        max_batch: int,
    ) -> None:
        self._catalog = catalog
        self._metrics = metrics
        self._wait_ms = wait_ms
        self._retry_after_s = retry_after_s
        self._max_batch = max_batch
        self._service: EmbarkService | None = None
        self._categorizer: CategorizeService | None = None
        self._similar: SimilarService | None = None
        self.ready = False

    def attach(
        self,
        service: EmbarkService,
        categorizer: CategorizeService,
        similar: SimilarService | None = None,
    ) -> None:
        self._service, self._categorizer, self._similar = service, categorizer, similar

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/embed", self.embed)
        app.router.add_post("/categorize", self.categorize)
        app.router.add_post("/similar", self.similar)
        app.router.add_get("/health", self.health)
        app.router.add_get("/ready", self.readiness)
        app.router.add_get("/metrics", self.scrape)

    @property
    def service(self) -> EmbarkService:
        if self._service is None:
            raise BackendUnavailable("EmbArk is starting: its backends are not reachable yet")
        return self._service

    async def embeddings(self, request: web.Request) -> web.Response:
        body = parse(EmbeddingsRequest, await _json(request))
        service = self.service
        spec = service.catalog.require(body.model)
        resolve_dimensions(spec, body.dimensions)
        items = to_inputs(spec, as_list(body.input))
        archive_hits: list[int] = []

        def seen(answers: Sequence[embark_pb2.Embedding]) -> None:
            archive_hits.extend(i for i, a in enumerate(answers) if a.status == _HIT)

        with service.admit(None):
            answers = await service.get_many(
                spec.name, items, self._deadline_ms(request), on_lookup=seen
            )
        headers = {HITS_HEADER: index_ranges(archive_hits)}
        for i, answer in enumerate(answers):
            if answer.status == _FAILED:
                raise HttpError(
                    422,
                    f"input {i} cannot be embedded: {answer.reason}",
                    code="input_failed",
                    param=f"input[{i}]",
                    headers=headers,
                )
        waiting = sum(1 for a in answers if a.status != _HIT)
        if waiting:
            raise HttpError(
                503,
                f"{waiting} of {len(answers)} inputs are being computed and were not ready"
                f" within the deadline; retry after {self._retry_after_s:g} s",
                type_="service_unavailable",
                code="not_ready",
                headers={**headers, **retry_after_headers(self._retry_after_s)},
            )
        vectors.apply_dtype(answers, DTYPES[body.output_dtype])
        return _respond(embeddings_document(spec.name, answers, body.encoding_format), headers)

    async def embed(self, request: web.Request) -> web.Response:
        body = parse(EmbedRequest, await _json(request))
        service = self.service
        spec = service.catalog.require(body.model)
        items = to_inputs(spec, as_list(body.input))
        with service.admit(None):
            answers = await service.get_many(spec.name, items, body.wait_ms)
        vectors.apply_dtype(answers, DTYPES[body.output_dtype])
        return _respond(embed_document(spec, answers, body.encoding_format))

    async def categorize(self, request: web.Request) -> web.Response:
        body = parse(CategorizeRequest, await _json(request))
        service = self.service
        assert self._categorizer is not None  # attached with the service
        head = self._categorizer.registry.require(body.head)
        items = to_inputs(service.catalog.require(head.model), as_list(body.input))
        if len(items) > self._max_batch:
            raise InvalidInput(f"{len(items)} inputs; at most {self._max_batch} a call")
        with service.admit(None):
            answers = await self._categorizer.categorize_many(
                body.head,
                items,
                k=body.top_k,
                wait_ms=body.wait_ms,
                min_probability=body.min_probability,
            )
        return _respond(categorize_document(answers))

    async def similar(self, request: web.Request) -> web.Response:
        """FindSimilar: the same SimilarService the gRPC method calls."""
        body = parse(SimilarRequest, await _json(request))
        service = self.service
        if self._similar is None:
            raise PreconditionFailed(
                "similarity search is off: set EMBARK_STORE__SIMILARITY_SEARCH=true"
            )
        spec = service.catalog.require(body.model)
        query = embark_pb2.FindSimilarRequest(
            model=spec.name, top_k=body.top_k, wait_ms=body.wait_ms
        )
        if body.key is not None:
            query.key = body.key
        else:
            query.input.CopyFrom(to_inputs(spec, [body.input or ""])[0])
        if body.min_score is not None:
            query.min_score = body.min_score
        with service.admit(None):
            found = await self._similar.find_similar(query, wait_ms=body.wait_ms)
        return _respond(similar_document(found))

    async def models(self, request: web.Request) -> web.Response:
        return _respond(models_document(list(self._catalog.values())))

    async def health(self, request: web.Request) -> web.Response:
        """Live: the process answers. Says nothing of the backends (that is /ready)."""
        return _respond({"status": "ok"})

    async def readiness(self, request: web.Request) -> web.Response:
        """Ready: the store and queue answer (the same signal as gRPC health SERVING)."""
        if self.ready:
            return _respond({"status": "ready"})
        return _respond({"status": "not ready"}, status=503)

    async def scrape(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._metrics.exposition),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    def _deadline_ms(self, request: web.Request) -> int:
        raw = request.headers.get(WAIT_HEADER)
        if raw is None:
            return self._wait_ms
        try:
            asked = int(raw)
        except ValueError:
            raise InvalidInput(f"{WAIT_HEADER} must be an integer, got {raw[:32]!r}") from None
        if asked < 0:
            raise InvalidInput(f"{WAIT_HEADER} must be >= 0, got {asked}")
        return min(asked, self._wait_ms)


async def _json(request: web.Request) -> object:
    raw = await request.read()  # past client_max_size: aiohttp raises 413
    try:
        doc: object = json.loads(raw)
    except ValueError:
        raise HttpError(400, "the request body is not valid JSON", code="invalid_json") from None
    return doc


def _respond(
    doc: dict[str, Any] | bytes, headers: dict[str, str] | None = None, *, status: int = 200
) -> web.Response:
    body = doc if isinstance(doc, bytes) else json.dumps(doc, separators=(",", ":")).encode()
    return web.Response(
        status=status,
        body=body,
        content_type="application/json",
        headers=headers,
    )
