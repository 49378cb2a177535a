"""Retina's errors. Each carries its gRPC status code and whether a retry can help.

RetinaError               INTERNAL
├── ItemFailed            a permanent per-item failure; becomes an ItemError in that item's
│                         slot of the response, never a failed call
├── UnknownModel          NOT_FOUND
├── RevisionMismatch      FAILED_PRECONDITION: the caller expects another model revision
├── InvalidRequest        INVALID_ARGUMENT
├── Overloaded            RESOURCE_EXHAUSTED (retriable)
└── ArtifactError         a model artifact is missing, corrupt or below its parity gate
"""

from __future__ import annotations

import grpc


class RetinaError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retriable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ItemFailed(RetinaError):
    """One input cannot be encoded, now or later: ``reason`` is short and machine-readable
    (``http_404``, ``not_an_image``, ``too_large``, ``too_many_pixels``, ``empty_input``,
    ``blocked_address``, ``timeout`` ...), ``message`` is for humans."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


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
