"""EmbArk's error hierarchy, shared by the server and this client (``embark.errors`` re-exports
it). Every error carries its gRPC status code and whether a retry can help.

    EmbarkError                       (INTERNAL, not retriable)
    ├── InvalidInput                  INVALID_ARGUMENT: empty, oversized or malformed input
    ├── UnknownModel                  NOT_FOUND: the model is not in the catalog
    ├── UnknownHead                   NOT_FOUND: no categorizer head of that name
    ├── UnknownKey                    NOT_FOUND: no stored vector has that key (FindSimilar)
    ├── PreconditionFailed            FAILED_PRECONDITION: e.g. a head bound to another revision
    ├── Unauthenticated               UNAUTHENTICATED: missing or wrong token
    ├── Overloaded                    RESOURCE_EXHAUSTED: a bounded buffer is full (retriable)
    ├── DeadlineExceeded              DEADLINE_EXCEEDED: the caller's deadline passed before the
    │   │                                               call was worked on (retriable)
    │   └── NotReady                  a client's wait-until-HIT deadline passed (.results)
    └── BackendUnavailable            UNAVAILABLE: a store, queue or encoder did not answer
                                                   (retriable)

On the server one guard around every method turns these into gRPC statuses with their
message; any other exception is logged with its traceback and answered as a generic INTERNAL.
On the client ``from_rpc_error`` turns a status back into its class (a NOT_FOUND is an
UnknownModel unless the message names a head).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc

from embark_api.errors import ServiceError

if TYPE_CHECKING:
    from embark_client._results import EmbeddingResult


class EmbarkError(ServiceError):
    """Base class of EmbArk's errors. ``code`` is the gRPC status; ``retriable`` says whether
    retrying may help (both from ``embark_api.errors.ServiceError``, the base Retina's errors
    share)."""


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


class Unauthenticated(EmbarkError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Overloaded(EmbarkError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retriable = True


class DeadlineExceeded(EmbarkError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    retriable = True


class NotReady(DeadlineExceeded):
    """``wait_for_hits`` gave up: ``results`` are the last answers (some not HIT yet)."""

    def __init__(self, message: str, results: Sequence[EmbeddingResult]) -> None:
        super().__init__(message)
        self.results = list(results)


class BackendUnavailable(EmbarkError):
    code = grpc.StatusCode.UNAVAILABLE
    retriable = True


_BY_CODE: dict[grpc.StatusCode, type[EmbarkError]] = {
    cls.code: cls
    for cls in (
        InvalidInput,
        UnknownModel,
        PreconditionFailed,
        Unauthenticated,
        Overloaded,
        DeadlineExceeded,
        BackendUnavailable,
    )
}


def from_rpc_error(exc: grpc.RpcError) -> EmbarkError:
    """The typed error of a failed call, its message prefixed with the status name."""
    # The blocking stub raises a grpc.Call; the asyncio stub an AioRpcError, which is not one.
    if isinstance(exc, (grpc.Call, grpc.aio.AioRpcError)):
        code, details = exc.code(), exc.details() or ""
    else:
        code, details = grpc.StatusCode.UNKNOWN, str(exc)
    cls = _BY_CODE.get(code, EmbarkError)
    if cls is UnknownModel and "head" in details:
        cls = UnknownHead
    elif cls is UnknownModel and "has key" in details:
        cls = UnknownKey
    error = cls(f"{code.name}: {details}")
    error.code = code
    return error
