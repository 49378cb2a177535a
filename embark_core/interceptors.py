"""The server interceptor every EmbArk service installs: a ``ServiceError`` (EmbArk's, Retina's:
one base, ``embark_api.errors``) becomes its own gRPC status and message; a request that is not a
valid protobuf message is INVALID_ARGUMENT; anything else is a bug, logged with its traceback and
answered with a generic INTERNAL, so no exception text or stack trace ever reaches a client
(exception text can hold paths, URLs and internals).

Every unary-unary method is wrapped (health's Check raises no ServiceError, so it is unchanged);
streaming methods (reflection, health's Watch) pass through untouched. With ``observe``, every
answer is reported with its method, status code and start time (EmbArk's per-RPC latency and
status metrics).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc
from google.protobuf.message import DecodeError

from embark_api.errors import ServiceError

log = logging.getLogger(__name__)

# grpc-stubs makes these generic; the runtime classes are not subscriptable.
if TYPE_CHECKING:
    Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = Callable
    _ServerInterceptor = grpc.aio.ServerInterceptor

#: ``observe(method, code_name, started)``: one answer, ``started`` from time.perf_counter().
Observe = Callable[[str, str, float], None]

INTERNAL_MESSAGE = "internal error"
MALFORMED_MESSAGE = "the request is not a valid protobuf message (or has invalid UTF-8)"


def _map_errors(
    method: str,
    inner: Handler,
    deserialize: Callable[[bytes], Any] | None,
    observe: Observe | None,
) -> Handler:
    async def handle(raw: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            try:
                request = deserialize(raw) if deserialize is not None else raw
            except DecodeError:
                # grpc's own parsing would answer UNKNOWN with the parser's text.
                code = grpc.StatusCode.INVALID_ARGUMENT
                await context.abort(code, MALFORMED_MESSAGE)
            try:
                return await inner(request, context)
            except ServiceError as exc:
                code = exc.code
                await context.abort(exc.code, exc.message)
            except grpc.aio.AbortError:
                # The handler aborted with a status of its own. AbortError is an Exception in
                # grpc.aio: let it through, since aborting again raises UsageError.
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception:
                log.exception("unexpected error in %s", method)
                code = grpc.StatusCode.INTERNAL
                await context.abort(code, INTERNAL_MESSAGE)
        finally:
            if observe is not None:
                observe(method, code.name, started)

    return handle


class ErrorInterceptor(_ServerInterceptor):
    """Maps ``ServiceError`` to its status on every unary method, so a co-hosted service (Retina
    inside `embark dev`) is mapped by the same code; ``observe`` sees every answer."""

    def __init__(self, observe: Observe | None = None) -> None:
        self._observe = observe
        # The wrapped handler per method, built on the first call: grpc.aio asks the
        # interceptor on every call, and building the wrapper each time was measurable on the
        # hit path (bench/profile_hotpath.py). Keyed by method and checked against the handler
        # it wraps, so a re-registered method is wrapped again.
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}

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
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = grpc.unary_unary_rpc_method_handler(
            # On an aio server the handlers are coroutine functions; the stubs type the sync API.
            _map_errors(
                method,
                cast("Handler", handler.unary_unary),
                handler.request_deserializer,
                self._observe,
            ),
            # Parsed inside the wrapper, so a malformed message is INVALID_ARGUMENT.
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped
