"""The error contract every EmbArk service and client shares, beside the generated stubs: one
base class whose subclasses carry their gRPC status and whether a retry can help. The client's
hierarchy (``embark_client``, re-exported by ``embark.errors``) and Retina's (``retina.errors``)
derive from it, so one server-side guard (``embark_core.interceptors``) and one in-process
translation (``embark.encoding.call_error``) read any of them. It lives here because this is
the one package the slim client, EmbArk and Retina all ship or import.

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
