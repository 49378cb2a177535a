"""Server interceptors: errors to gRPC statuses, and the optional bearer token.

EmbarkError subclasses carry their status code and a message written for clients. Anything else
is a bug: it is logged with its traceback and answered as a generic INTERNAL, so no exception
text or stack trace ever reaches a client.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from embark.errors import EmbarkError

log = logging.getLogger(__name__)

Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


def _wrap_unary(behavior: Handler) -> Handler:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except EmbarkError as exc:
            await context.abort(exc.code, exc.message)
        except Exception:
            # context.abort raises AbortError (a BaseException subclass in grpc.aio): never
            # swallowed here, so only genuine bugs reach this branch.
            log.exception("unexpected error in %s", behavior.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    return wrapper


class ErrorInterceptor(grpc.aio.ServerInterceptor[Any, Any]):
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
            _wrap_unary(handler.unary_unary),  # type: ignore[arg-type]
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class TokenInterceptor(grpc.aio.ServerInterceptor[Any, Any]):
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
