"""Retina's errors. Each carries its gRPC status code and whether a retry can help.

embark_api.errors.ServiceError    the base every service shares (code, retriable, message)
└── RetinaError           INTERNAL
    ├── ItemFailed        a fault of one input; becomes an ItemError in that item's slot of the
    │                     response, never a failed call. ``retriable`` per instance: a 404 is
    │                     permanent, an image host's 503 may pass (the caller retries that item)
    ├── UnknownModel      NOT_FOUND
    ├── RevisionMismatch  FAILED_PRECONDITION: the caller expects another model revision
    ├── InvalidRequest    INVALID_ARGUMENT: the call itself is malformed (empty, too many inputs)
    ├── Overloaded        RESOURCE_EXHAUSTED (retriable)
    ├── Closing           UNAVAILABLE (retriable): the service is shutting down
    └── ArtifactError     a model artifact is missing, corrupt or below its parity gate

The whole call fails only when Retina itself cannot serve it; everything about one input is
that input's ``ItemFailed``.
"""

from __future__ import annotations

import grpc

from embark_api.errors import ServiceError


class RetinaError(ServiceError):
    """Base class of Retina's errors."""


class ItemFailed(RetinaError):
    """One input cannot be encoded: ``reason`` is short and machine-readable (``http_404``,
    ``not_an_image``, ``too_large``, ``too_many_pixels``, ``empty_input``, ``wrong_kind``,
    ``blocked_address``, ``timeout``, ``http_503``, ``connection_failed`` ...), ``message`` is
    for humans. ``retriable``: a later attempt for this item alone may succeed (the image host
    answered 5xx/408/429 or dropped the connection); the caller decides how often to try."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, reason: str, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.retriable = retriable


class UnknownModel(RetinaError):
    code = grpc.StatusCode.NOT_FOUND


class RevisionMismatch(RetinaError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class InvalidRequest(RetinaError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Overloaded(RetinaError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retriable = True


class ArtifactError(RetinaError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Closing(RetinaError):
    code = grpc.StatusCode.UNAVAILABLE
    retriable = True
