"""Retina called in-process, seen through EmbArk's ``Encoding`` protocol. Retina raises its
own errors; EmbArk and KFC act on theirs (retriable or not), so they are translated here by
gRPC status — exactly what the gRPC client does for the remote Retina."""

from __future__ import annotations

import grpc

from embark import errors
from embark_api.v1 import retina_pb2
from retina.errors import RetinaError
from retina.service import RetinaService

_BY_CODE: dict[grpc.StatusCode, type[errors.EmbarkError]] = {
    grpc.StatusCode.NOT_FOUND: errors.UnknownModel,
    grpc.StatusCode.FAILED_PRECONDITION: errors.PreconditionFailed,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidInput,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.Overloaded,
}


class InProcessEncoding:
    def __init__(self, service: RetinaService) -> None:
        self._service = service

    async def embed(self, request: retina_pb2.EmbedRequest) -> retina_pb2.EmbedResponse:
        try:
            return await self._service.embed(request)
        except RetinaError as exc:
            fallback = errors.BackendUnavailable if exc.retriable else errors.EmbarkError
            raise _BY_CODE.get(exc.code, fallback)(f"retina: {exc.message}") from None
