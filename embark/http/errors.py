"""HTTP errors in OpenAI's shape, and the one table from EmbArk's error codes to HTTP statuses.

Every error body is ``{"error": {"message", "type", "param", "code"}}``, as the OpenAI API
answers and as its SDKs parse (``openai.BadRequestError`` etc. carry ``.body``/``.code``).
EmbarkError subclasses map through their gRPC code, so gRPC and HTTP say the same thing for
the same fault; anything else is logged by the middleware and answered as a generic 500.

    grpc code            HTTP  type                     retried by the openai SDK
    INVALID_ARGUMENT     400   invalid_request_error    no
    FAILED_PRECONDITION  400   invalid_request_error    no
    UNAUTHENTICATED      401   authentication_error     no
    NOT_FOUND            404   invalid_request_error    no
    RESOURCE_EXHAUSTED   429   rate_limit_error         yes (Retry-After)
    UNAVAILABLE          503   service_unavailable      yes (Retry-After)
    DEADLINE_EXCEEDED    504   timeout                  yes
    INTERNAL, others     500   server_error             yes
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import grpc
from aiohttp import web

from embark.errors import EmbarkError, UnknownModel

_STATUS: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
}
_INTERNAL = (500, "server_error")


class HttpError(Exception):
    """An error the HTTP front answers as it is (status, OpenAI-shaped body, extra headers)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code
        self.param, self.headers = param, dict(headers or {})

    def response(self) -> web.Response:
        body = {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }
        return web.Response(
            status=self.status,
            body=json.dumps(body).encode(),
            content_type="application/json",
            headers=self.headers,
        )


def retry_after_headers(seconds: float) -> dict[str, str]:
    """Retry-After in whole seconds (RFC 9110), the same in milliseconds (read first by the
    openai SDK), and x-should-retry, which that SDK obeys whatever the status."""
    return {
        "Retry-After": str(max(1, round(seconds))),
        "retry-after-ms": str(max(1, int(seconds * 1000))),
        "x-should-retry": "true",
    }


def from_embark(exc: EmbarkError, *, retry_after_s: float) -> HttpError:
    """The HTTP form of an EmbArk error: the status of its gRPC code, its client message."""
    status, type_ = _STATUS.get(exc.code, _INTERNAL)
    headers = retry_after_headers(retry_after_s) if exc.retriable else None
    code = "model_not_found" if isinstance(exc, UnknownModel) else exc.code.name.lower()
    return HttpError(status, exc.message, type_=type_, code=code, headers=headers)


def internal() -> HttpError:
    """A bug: the client learns nothing but that it happened (the log has the traceback)."""
    status, type_ = _INTERNAL
    return HttpError(status, "internal error", type_=type_, code="internal")
