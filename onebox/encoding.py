"""Retina called in-process, seen through EmbArk's ``Encoding`` protocol. Retina raises its own
errors; they are translated by status with ``embark.encoding.call_error``, the very table the
gRPC client uses for the remote Retina, so the two paths cannot classify a fault differently."""

from __future__ import annotations

from embark.encoding import call_error
from embark_api.v1 import retina_pb2
from retina.errors import RetinaError
from retina.service import RetinaService


class InProcessEncoding:
    def __init__(self, service: RetinaService) -> None:
        self._service = service

    async def embed(self, request: retina_pb2.EmbedRequest) -> retina_pb2.EmbedResponse:
        try:
            return await self._service.embed(request)
        except RetinaError as exc:
            raise call_error(exc.code, exc.message) from None
