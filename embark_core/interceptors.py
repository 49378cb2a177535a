"""What wraps every call of every EmbArk service: a ``ServiceError`` (EmbArk's, Retina's: one
base, ``embark_api.errors``) becomes its own gRPC status and message; a request that is not a
valid protobuf message is INVALID_ARGUMENT; anything else is a bug, logged with its traceback and
answered with a generic INTERNAL, so no exception text or stack trace ever reaches a client
(exception text can hold paths, URLs and internals). With ``observe``, every answer is reported
with its method, status code and start time (EmbArk's per-RPC latency and status metrics); with
a ``BearerToken``, a call without it is UNAUTHENTICATED before its request is even parsed.

Applied when a service is registered (``Guard``), not as a grpc.aio ``ServerInterceptor``:
grpc.aio runs an interceptor chain in Python (coroutines, a continuation) on every call before
it finds the handler, while a handler wrapped once is found as a bare one is. On a bare server
answering one prebuilt hit, the same guard as an interceptor cost 2% and 6% more server CPU a
call than at registration, in two runs (bench/guard_cost.py, 8 alternating rounds each, each
server's CPU over its load generator's: a shared host's speed swings +-25% by round).

Every unary-unary method is wrapped (health's Check raises no ServiceError, so it is unchanged);
streaming methods (reflection, health's Watch) are registered as they are, and must be open to
callers without the token (``Guard`` refuses to register them otherwise).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import grpc
from google.protobuf.message import DecodeError

from embark_api.errors import ServiceError

log = logging.getLogger(__name__)

# grpc-stubs makes these generic; the runtime classes are not subscriptable.
if TYPE_CHECKING:
    Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
    MethodHandler = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = Callable
    MethodHandler = grpc.RpcMethodHandler

#: ``observe(method, code_name, started)``: one answer, ``started`` from time.perf_counter().
Observe = Callable[[str, str, float], None]

INTERNAL_MESSAGE = "internal error"
MALFORMED_MESSAGE = "the request is not a valid protobuf message (or has invalid UTF-8)"
UNAUTHENTICATED_MESSAGE = "missing or invalid token"


@dataclass(frozen=True, slots=True)
class BearerToken:
    """Requires ``authorization: Bearer <token>`` on every method except those starting with
    one of ``open`` (load balancers and grpcurl must reach health and reflection without it)."""

    token: str = field(repr=False)  # a secret: never in a log line or a traceback's locals
    open: tuple[str, ...] = ("/grpc.health.v1.Health/", "/grpc.reflection.")

    def is_open(self, method: str) -> bool:
        return method.startswith(self.open)

    def allows(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        """Whether gRPC ``metadata`` carries the token."""
        return self.matches(next((v for k, v in metadata or () if k == "authorization"), ""))

    def matches(self, authorization: str | bytes) -> bool:
        """Whether an ``authorization`` value (gRPC metadata, an HTTP header) is the token."""
        given = authorization if isinstance(authorization, bytes) else authorization.encode()
        # Constant-time: the comparison must not leak how much of the token matched.
        return hmac.compare_digest(given, f"Bearer {self.token}".encode())


def _guarded(
    method: str,
    inner: Handler,
    deserialize: Callable[[bytes], Any] | None,
    observe: Observe | None,
    token: BearerToken | None,
) -> Handler:
    async def handle(raw: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            if token is not None and not token.allows(context.invocation_metadata()):
                code = grpc.StatusCode.UNAUTHENTICATED
                await context.abort(code, UNAUTHENTICATED_MESSAGE)
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


class Guard:
    """Where services are registered on ``server`` (``target``) so that every unary method is
    wrapped as the module says, once, at registration."""

    def __init__(
        self,
        server: grpc.aio.Server,
        *,
        observe: Observe | None = None,
        token: BearerToken | None = None,
    ) -> None:
        self._server = server
        self._observe = observe
        self._token = token

    @property
    def target(self) -> grpc.aio.Server:
        """This guard where a generated ``add_*Servicer_to_server`` wants a server: those call
        only ``add_generic_rpc_handlers`` and ``add_registered_method_handlers``."""
        return cast("grpc.aio.Server", self)

    def wrap(self, method: str, handler: MethodHandler) -> MethodHandler:
        """``handler`` of ``method`` (``/package.Service/Method``) as this guard serves it."""
        token = self._token if self._token is not None and not self._token.is_open(method) else None
        if handler.unary_unary is None:
            if token is not None:
                raise ValueError(f"{method}: a streaming method cannot require the token")
            return handler
        return grpc.unary_unary_rpc_method_handler(
            # On an aio server the handlers are coroutine functions; the stubs type the sync API.
            _guarded(
                method,
                cast("Handler", handler.unary_unary),
                handler.request_deserializer,
                self._observe,
                token,
            ),
            # Parsed inside the wrapper, so a malformed message is INVALID_ARGUMENT.
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )

    # -- what the generated adders call -------------------------------------------------------

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, MethodHandler]
    ) -> None:
        wrapped = {name: self.wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        self._server.add_registered_method_handlers(service, wrapped)  # type: ignore[attr-defined]

    def add_generic_rpc_handlers(
        self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        self._server.add_generic_rpc_handlers(tuple(_GuardedGeneric(h, self) for h in handlers))


class _GuardedGeneric(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """A generic handler's answers, wrapped by ``guard`` once per method (grpc asks it on every
    call that no registered handler answers; the wrapper is remembered with the handler it
    wraps, so a handler that changes is wrapped again)."""

    def __init__(self, inner: grpc.GenericRpcHandler[Any, Any], guard: Guard) -> None:
        self._inner = inner
        self._guard = guard
        self._wrapped: dict[str, tuple[MethodHandler, MethodHandler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> MethodHandler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._guard.wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped
