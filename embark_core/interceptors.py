"""The server interceptor every EmbArk service installs: a ``ServiceError`` becomes its own gRPC
status and message; a request that is not a valid protobuf message is INVALID_ARGUMENT; anything
else is a bug, logged with its traceback and answered with a generic INTERNAL, so no exception
text or stack trace ever reaches a client (exception text can hold paths, URLs and internals).

Every unary-unary method is wrapped (health's Check raises no ServiceError, so it is unchanged);
streaming methods (reflection, health's Watch) pass through untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc
from google.protobuf.message import DecodeError

from embark_core.errors import ServiceError

log = logging.getLogger(__name__)

# grpc-stubs makes these generic; the runtime classes are not subscriptable.
if TYPE_CHECKING:
    Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = Callable
    _ServerInterceptor = grpc.aio.ServerInterceptor

INTERNAL_MESSAGE = "internal error"
MALFORMED_MESSAGE = "the request is not a valid protobuf message (or has invalid UTF-8)"


def _map_errors(method: str, inner: Handler, deserialize: Callable[[bytes], Any] | None) -> Handler:
    async def handle(raw: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            request = deserialize(raw) if deserialize is not None else raw
        except DecodeError:
            # grpc's own parsing would answer UNKNOWN with the parser's text.
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_MESSAGE)
        try:
            return await inner(request, context)
        except ServiceError as exc:
            await context.abort(exc.code, exc.message)
        except grpc.aio.AbortError:
            # The handler aborted with a status of its own. AbortError is an Exception in
            # grpc.aio: let it through, since aborting again raises UsageError and logs a bug.
            raise
        except Exception:
            log.exception("unexpected error in %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)

    return handle


class ErrorInterceptor(_ServerInterceptor):
    """Maps ``ServiceError`` (EmbArk's, Retina's: one base) to its status on every unary method,
    so a co-hosted service (Retina inside `embark dev`) is mapped by the same code."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        return grpc.unary_unary_rpc_method_handler(
            # On an aio server the handlers are coroutine functions; the stubs type the sync API.
            _map_errors(method, cast("Handler", handler.unary_unary), handler.request_deserializer),
            # Parsed inside the wrapper, so a malformed message is INVALID_ARGUMENT.
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )
