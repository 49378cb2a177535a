"""Server interceptors: errors to gRPC statuses, and the optional bearer token.

EmbarkError subclasses carry their status code and a message written for clients. Anything else
is a bug: it is logged with its traceback and answered as a generic INTERNAL, so no exception
text or stack trace ever reaches a client.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from embark.errors import EmbarkError

log = logging.getLogger(__name__)

# grpc-stubs makes these generic; the runtime classes are not subscriptable.
if TYPE_CHECKING:
    Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = Callable
    _ServerInterceptor = grpc.aio.ServerInterceptor


MALFORMED_MESSAGE = "the request is not a valid protobuf message (or has invalid UTF-8)"


def _wrap_unary(behavior: Handler, deserialize: Callable[[bytes], Any] | None) -> Handler:
    async def wrapper(raw: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            request = deserialize(raw) if deserialize is not None else raw
        except DecodeError:
            # grpc's own parsing would answer UNKNOWN with the parser's text.
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_MESSAGE)
        try:
            return await behavior(request, context)
        except EmbarkError as exc:
            await context.abort(exc.code, exc.message)
        except grpc.aio.AbortError:
            # The handler aborted with a status of its own. AbortError is an Exception in
            # grpc.aio: let it through, since aborting again raises UsageError and logs a bug.
            raise
        except Exception as exc:
            # Errors of a co-hosted service (Retina inside `embark dev`) carry the same
            # `code` + `message` contract; anything else is a bug.
            code, message = getattr(exc, "code", None), getattr(exc, "message", None)
            if isinstance(code, grpc.StatusCode) and isinstance(message, str):
                await context.abort(code, message)
            log.exception("unexpected error in %s", behavior.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    return wrapper


class ErrorInterceptor(_ServerInterceptor):
    """Maps EmbarkError (and any error with `code` and `message`) to its status."""

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
        return grpc.unary_unary_rpc_method_handler(
            # grpc.aio handlers are coroutine functions; the stubs type them as sync.
            _wrap_unary(handler.unary_unary, handler.request_deserializer),  # type: ignore[arg-type]
            # Parsed inside the wrapper, so a malformed message is INVALID_ARGUMENT.
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )


class TokenInterceptor(_ServerInterceptor):
    """Requires `authorization: Bearer <token>` on every call except health and reflection
    (load balancers and grpcurl must reach those without credentials)."""

    _OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.")

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        if method.startswith(self._OPEN):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = str(metadata.get("authorization", "")).encode()
        # Constant-time: the comparison must not leak how much of the token matched.
        if hmac.compare_digest(given, self._expected):
            return await continuation(handler_call_details)

        async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid token")

        return grpc.unary_unary_rpc_method_handler(deny)
