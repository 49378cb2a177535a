"""EmbArk's error hierarchy. Every error carries its gRPC status code and whether a retry can help.

    EmbarkError                       (INTERNAL, not retriable)
    ├── InvalidInput                  INVALID_ARGUMENT: empty, oversized or malformed input
    ├── UnknownModel                  NOT_FOUND: the model is not in the catalog
    ├── UnknownHead                   NOT_FOUND: no categorizer head of that name
    ├── UnknownKey                    NOT_FOUND: no stored vector has that key (FindSimilar)
    ├── PreconditionFailed            FAILED_PRECONDITION: e.g. a head bound to another revision
    ├── Overloaded                    RESOURCE_EXHAUSTED: a bounded buffer is full (retriable)
    ├── DeadlineExceeded              DEADLINE_EXCEEDED: the caller's deadline passed before the
    │                                                   call was worked on (retriable)
    └── BackendUnavailable            UNAVAILABLE: a store, queue or encoder did not answer
                                                   (retriable)

One server interceptor (``embark.server.interceptors``) turns these into gRPC statuses with
their message; any other exception is logged with its traceback and answered as a generic
INTERNAL, so no exception text or stack trace ever reaches a client.
"""

from __future__ import annotations

import grpc


class EmbarkError(Exception):
    """Base class. ``code`` is the gRPC status; ``retriable`` says whether retrying may help."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retriable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(EmbarkError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class UnknownModel(EmbarkError):
    code = grpc.StatusCode.NOT_FOUND


class UnknownHead(EmbarkError):
    code = grpc.StatusCode.NOT_FOUND


class UnknownKey(EmbarkError):
    code = grpc.StatusCode.NOT_FOUND


class PreconditionFailed(EmbarkError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Overloaded(EmbarkError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retriable = True


class DeadlineExceeded(EmbarkError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    retriable = True


class BackendUnavailable(EmbarkError):
    code = grpc.StatusCode.UNAVAILABLE
    retriable = True
