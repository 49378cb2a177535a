"""EmbArk's error hierarchy. Every error carries its gRPC status code and whether a retry can help.

The classes EmbArk's clients see live in the client distribution (``embark_client._errors``,
whose docstring draws the hierarchy), so the server raises and the client catches the very same
classes; this module re-exports them for the server's code, and adds what only the server
raises:

    EmbarkError
    └── EncoderFailed                 INTERNAL: the encoder failed a call for no reason it gave
                                      (a bug or a broken model, not a backend outage): KFC
                                      isolates the call's items instead of retrying it

Every one derives from ``embark_api.errors.ServiceError``, like Retina's. One server-side guard
(``embark_core.interceptors``) turns them into gRPC statuses with their message, and one table
(``embark.http.errors``) into HTTP statuses; any other exception is logged with its traceback
and answered as a generic INTERNAL, so no exception text or stack trace ever reaches a client.
"""

from __future__ import annotations

import grpc
from embark_client._errors import (
    BackendUnavailable,
    DeadlineExceeded,
    EmbarkError,
    InvalidInput,
    Overloaded,
    PreconditionFailed,
    Unauthenticated,
    UnknownHead,
    UnknownKey,
    UnknownModel,
)


class EncoderFailed(EmbarkError):
    code = grpc.StatusCode.INTERNAL


__all__ = [
    "BackendUnavailable",
    "DeadlineExceeded",
    "EmbarkError",
    "EncoderFailed",
    "InvalidInput",
    "Overloaded",
    "PreconditionFailed",
    "Unauthenticated",
    "UnknownHead",
    "UnknownKey",
    "UnknownModel",
]
