"""Server interceptors: errors to gRPC statuses (with per-method latency and status counts),
and the optional bearer token.

EmbarkError subclasses carry their status code and a message written for clients. Anything else
is a bug: it is logged with its traceback and answered as a generic INTERNAL, so no exception
text or stack trace ever reaches a client.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from embark.errors import EmbarkError
from embark.metrics import EmbarkMetrics

log = logging.getLogger(__name__)

# grpc-stubs makes these generic; the runtime classes are not subscriptable.
if TYPE_CHECKING:
    Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = Callable
    _ServerInterceptor = grpc.aio.ServerInterceptor


MALFORMED_MESSAGE = "the request is not a valid protobuf message (or has invalid UTF-8)"


def _wrap_unary(
    behavior: Handler,
    deserialize: Callable[[bytes], Any] | None,
    method: str,
    metrics: EmbarkMetrics | None,
) -> Handler:
    async def wrapper(raw: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            request = deserialize(raw) if deserialize is not None else raw
        except DecodeError:
            # grpc's own parsing would answer UNKNOWN with the parser's text.
            code = grpc.StatusCode.INVALID_ARGUMENT
            await _abort(context, code, MALFORMED_MESSAGE, method, metrics, started)
        try:
            return await behavior(request, context)
        except EmbarkError as exc:
            code = exc.code
            await context.abort(exc.code, exc.message)
        except grpc.aio.AbortError:
            # The handler aborted with a status of its own. AbortError is an Exception in
            # grpc.aio: let it through, since aborting again raises UsageError and logs a bug.
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception as exc:
            # Errors of a co-hosted service (Retina inside `embark dev`) carry the same
            # `code` + `message` contract; anything else is a bug.
            known, message = getattr(exc, "code", None), getattr(exc, "message", None)
            if isinstance(known, grpc.StatusCode) and isinstance(message, str):
                code = known
                await context.abort(known, message)
            log.exception("unexpected error in %s", behavior.__qualname__)
            code = grpc.StatusCode.INTERNAL
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        finally:
            if metrics is not None:
                metrics.observe_request("grpc", method, code.name, started)

    return wrapper


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any],
    code: grpc.StatusCode,
    message: str,
    method: str,
    metrics: EmbarkMetrics | None,
    started: float,
) -> None:
    """Abort before the handler ran (a malformed message), counted like any other answer."""
    if metrics is not None:
        metrics.observe_request("grpc", method, code.name, started)
    await context.abort(code, message)


class ErrorInterceptor(_ServerInterceptor):
    """Maps EmbarkError (and any error with `code` and `message`) to its status, and with
    ``metrics`` times every call and counts it by method and status code
    (``embark_request_seconds`` / ``embark_responses`` with ``api="grpc"``)."""

    def __init__(self, metrics: EmbarkMetrics | None = None) -> None:
        self._metrics = metrics

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
            _wrap_unary(
                handler.unary_unary,  # type: ignore[arg-type]
                handler.request_deserializer,
                handler_call_details.method,
                self._metrics,
            ),
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
