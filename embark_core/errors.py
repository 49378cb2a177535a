"""The error base of every EmbArk service. Each service draws its own hierarchy in its own
``errors.py`` (``embark.errors``, ``retina.errors``) on top of this one class, so one
interceptor (``embark_core.interceptors``) and one in-process translation can read any of them.

    ServiceError          INTERNAL, not retriable, unless a subclass says otherwise
      .code               the gRPC status a client sees
      .retriable          whether the same call may succeed later
      .message            written for clients: never exception text or a traceback
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """Base class. ``code`` is the gRPC status; ``retriable`` says whether retrying may help."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retriable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
