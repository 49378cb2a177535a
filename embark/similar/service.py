"""FindSimilar: the stored items nearest to a query, independent of gRPC.

The query is an input, looked up through ``EmbarkService.get_many`` exactly like GetEmbedding
(so a miss is PENDING and queued, ``wait_ms`` reads through, and no other path keys or
validates inputs), or the key of a stored item, read from the store. Only a HIT is searched:
anything else answers its status with no neighbours (the OOV vector is never searched).

A search the index cannot answer (the store down) answers UNAVAILABLE with a reason, like a
lookup; a search the deployment is not set up for is FAILED_PRECONDITION.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from embark import vectors
from embark.errors import BackendUnavailable, InvalidInput, UnknownKey
from embark.keys import InputKind
from embark.service import EmbarkService
from embark.similar.base import MAX_K, Neighbour, SimilarityIndex, Space
from embark.store.base import EmbeddingStore, StoredVector
from embark_api.v1 import embark_pb2, inputs_pb2

log = logging.getLogger(__name__)

DEFAULT_K = 10
_KEY_CHARS = 64


class SimilarService:
    def __init__(
        self, service: EmbarkService, store: EmbeddingStore, index: SimilarityIndex
    ) -> None:
        self._service = service
        self._store = store
        self._index = index

    async def find_similar(
        self,
        request: embark_pb2.FindSimilarRequest,
        *,
        wait_ms: int = 0,
        budget_s: float | None = None,
    ) -> embark_pb2.FindSimilarResponse:
        spec = self._service.catalog.require(request.model)
        k = request.top_k or DEFAULT_K
        if k > MAX_K:
            raise InvalidInput(f"top_k {k}: at most {MAX_K}")
        min_score = request.min_score if request.HasField("min_score") else None
        if min_score is not None and not (math.isfinite(min_score) and -1 <= min_score <= 1):
            raise InvalidInput(f"min_score {min_score}: a cosine, between -1 and 1")
        answer = embark_pb2.FindSimilarResponse(model=spec.name, revision=spec.revision)
        which = request.WhichOneof("query")
        if which == "key":
            query = await self._stored(spec.name, spec.revision, request.key, answer)
        elif which == "input":
            [found] = await self._service.get_many(
                spec.name, [request.input], wait_ms, budget_s=budget_s
            )
            answer.key, answer.status, answer.reason = found.key, found.status, found.reason
            query = found.vector if found.status == embark_pb2.HIT else None
        else:
            raise InvalidInput("set input or key")
        if query is None:
            return answer
        vector = vectors.from_bytes(query, spec.dim)
        if not np.any(vector):
            raise InvalidInput("the query's vector is all zeros: it has no neighbours")
        space = Space(spec.name, spec.revision, spec.dim)
        try:
            # One more than asked: the query itself, when stored, is dropped below.
            found_near = await self._index.search(space, vector, min(k + 1, MAX_K))
        except BackendUnavailable as exc:
            log.warning("similarity search failed: %s", exc)
            answer.status = embark_pb2.UNAVAILABLE
            answer.reason = "the archive did not answer the search"
            return answer
        answer.neighbours.extend(
            _neighbour(spec.kind, n)
            for n in found_near
            if n.key != answer.key and (min_score is None or n.score >= min_score)
        )
        del answer.neighbours[k:]
        return answer

    async def _stored(
        self, model: str, revision: str, key: str, answer: embark_pb2.FindSimilarResponse
    ) -> bytes | None:
        """The stored vector of ``key`` (sets the answer's key and status); None when the
        archive did not answer."""
        if not key or len(key) > _KEY_CHARS:
            raise InvalidInput(f"key must be 1-{_KEY_CHARS} characters")
        answer.key = key
        try:
            found = (await self._store.get_many([key])).get(key)
        except BackendUnavailable:
            answer.status = embark_pb2.UNAVAILABLE
            answer.reason = "the archive did not answer in time"
            return None
        if not isinstance(found, StoredVector) or (found.model, found.revision) != (
            model,
            revision,
        ):
            # Not PENDING: nothing can be queued for a key alone (its input is unknown).
            raise UnknownKey(f"no stored vector of {model}@{revision} has key {key!r}")
        answer.status = embark_pb2.HIT
        return found.vector


def _neighbour(kind: InputKind, found: Neighbour) -> embark_pb2.Neighbour:
    item = (
        inputs_pb2.Input(text=found.input)
        if kind == "text"
        else inputs_pb2.Input(image_url=found.input)
    )
    return embark_pb2.Neighbour(key=found.key, score=found.score, input=item)
