"""How EmbArk and KFC reach the encoders: one small Protocol, satisfied in-process by
``retina.service.RetinaService`` (structurally — embark never imports retina) and over the
network by ``GrpcEncoding``.
"""

from __future__ import annotations

from typing import Protocol

import grpc

from embark.errors import BackendUnavailable, EmbarkError, InvalidInput, PreconditionFailed
from embark.errors import UnknownModel as EmbarkUnknownModel
from embark_api.v1 import retina_pb2, retina_pb2_grpc

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
        """Encode one model batch. Per-item permanent failures come back in their slots;
        failures of the whole call raise."""
        ...


# gRPC codes of a failed Embed call -> the error EmbArk/KFC act on. UNAVAILABLE-like codes are
# transient (KFC backs off and commits nothing); the others are permanent for this batch.
_CODE_TO_ERROR: dict[grpc.StatusCode, type[EmbarkError]] = {
    grpc.StatusCode.NOT_FOUND: EmbarkUnknownModel,
    grpc.StatusCode.FAILED_PRECONDITION: PreconditionFailed,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
}


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
            error = _CODE_TO_ERROR.get(exc.code(), BackendUnavailable)
            raise error(f"retina: {exc.code().name}: {exc.details()}") from None
        return response
