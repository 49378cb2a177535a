"""EmbArk's error hierarchy. Every error carries its gRPC status code and whether a retry can help.

The classes live in the client distribution (``embark_client._errors``, whose docstring draws
the hierarchy), so the server raises and the client catches the very same classes; this module
re-exports them for the server's code.

One server interceptor (``embark.server.interceptors``) turns these into gRPC statuses with
their message, and one table (``embark.http.errors``) into HTTP statuses; any other exception
is logged with its traceback and answered as a generic INTERNAL, so no exception text or stack
trace ever reaches a client.
"""

from __future__ import annotations

from embark_client._errors import (
    BackendUnavailable,
    DeadlineExceeded,
    EmbarkError,
    InvalidInput,
    Overloaded,
    PreconditionFailed,
    Unauthenticated,
    UnknownHead,
    UnknownModel,
)

__all__ = [
    "BackendUnavailable",
    "DeadlineExceeded",
    "EmbarkError",
    "InvalidInput",
    "Overloaded",
    "PreconditionFailed",
    "Unauthenticated",
    "UnknownHead",
    "UnknownModel",
]
