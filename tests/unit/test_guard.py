"""``embark_core.interceptors.Guard`` at registration: what it wraps, what it refuses, and that a
generic handler's wrapper is built once per method (the calls themselves are tested through the
real servers: tests/unit/embark/test_server.py, test_request_metrics.py, retina/test_server.py)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from embark_core.interceptors import BearerToken, Guard


class _Recorder:
    """Stands in for grpc.aio.Server: keeps what the guard registers."""

    def __init__(self) -> None:
        self.registered: dict[str, dict[str, Any]] = {}
        self.generic: list[Any] = []

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.registered[service] = handlers

    def add_generic_rpc_handlers(self, handlers: tuple[Any, ...]) -> None:
        self.generic.extend(handlers)


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


async def _echo(request: Any, context: Any) -> Any:
    return request


async def _stream(request: Any, context: Any) -> Any:
    yield request


def _guard(token: BearerToken | None = None) -> tuple[Guard, _Recorder]:
    server = _Recorder()
    return Guard(server, token=token), server  # type: ignore[arg-type]


def test_unary_methods_are_wrapped_and_parse_their_own_request() -> None:
    guard, server = _guard()
    handler = grpc.unary_unary_rpc_method_handler(_echo, request_deserializer=bytes.decode)

    guard.add_registered_method_handlers("pkg.Svc", {"Echo": handler})

    wrapped = server.registered["pkg.Svc"]["Echo"]
    assert wrapped.unary_unary is not _echo
    # Parsed inside the wrapper, so a malformed message is INVALID_ARGUMENT, not grpc's UNKNOWN.
    assert wrapped.request_deserializer is None


def test_a_streaming_method_must_be_open_when_a_token_is_required() -> None:
    guard, server = _guard(BearerToken("t"))
    stream = grpc.unary_stream_rpc_method_handler(_stream)

    with pytest.raises(ValueError, match="streaming"):
        guard.add_registered_method_handlers("pkg.Svc", {"Watch": stream})
    guard.add_registered_method_handlers("grpc.health.v1.Health", {"Watch": stream})

    assert server.registered["grpc.health.v1.Health"]["Watch"] is stream


class _Swappable(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self) -> None:
        self.handler = grpc.unary_unary_rpc_method_handler(_echo)

    def service(self, details: Any) -> Any:
        return self.handler if details.method == "/pkg.Svc/Echo" else None


def test_a_generic_handler_is_wrapped_once_per_method_and_again_when_it_changes() -> None:
    guard, server = _guard()
    inner = _Swappable()
    guard.add_generic_rpc_handlers((inner,))
    [generic] = server.generic
    details = _Details("/pkg.Svc/Echo")

    first, again = generic.service(details), generic.service(details)
    inner.handler = grpc.unary_unary_rpc_method_handler(_echo)
    changed = generic.service(details)

    assert first is again
    assert first.unary_unary is not _echo
    assert changed is not first
    assert generic.service(_Details("/pkg.Svc/Missing")) is None


def test_the_token_is_compared_whole() -> None:
    token = BearerToken("s3cret")

    assert token.allows([("authorization", "Bearer s3cret")])
    assert token.allows([("x", "y"), ("authorization", b"Bearer s3cret")])
    for given in ([], [("authorization", "s3cret")], [("authorization", "Bearer s3cre")], None):
        assert not token.allows(given)
    assert token.is_open("/grpc.health.v1.Health/Check")
    assert "s3cret" not in repr(token)
    assert not token.is_open("/embark.v1.EmbArk/GetEmbedding")
