"""EmbArk's Python client (the ``embark-client`` distribution): what an application needs to ask
EmbArk for embeddings, and nothing of the server.

    _client.py   EmbarkClient (blocking) and AsyncEmbarkClient (asyncio) over gRPC
    _http.py     HttpEmbarkClient: the HTTP front's native /embed route, with requests
    _results.py  EmbeddingResult, CategorizeResult, make_input
    _errors.py   the error hierarchy, shared with the server (embark.errors re-exports it)
    _tls.py      Tls and the one place that turns it into gRPC channel credentials
"""

from embark_client._client import DEFAULT_MAX_BATCH, AsyncEmbarkClient, EmbarkClient
from embark_client._errors import (
    BackendUnavailable,
    DeadlineExceeded,
    EmbarkError,
    InvalidInput,
    NotReady,
    Overloaded,
    PreconditionFailed,
    Unauthenticated,
    UnknownHead,
    UnknownKey,
    UnknownModel,
    from_rpc_error,
)
from embark_client._http import HttpEmbarkClient
from embark_client._results import CategorizeResult, EmbeddingResult, make_input
from embark_client._tls import Tls, TlsConfig, aio_channel, channel

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_BATCH",
    "AsyncEmbarkClient",
    "BackendUnavailable",
    "CategorizeResult",
    "DeadlineExceeded",
    "EmbarkClient",
    "EmbarkError",
    "EmbeddingResult",
    "HttpEmbarkClient",
    "InvalidInput",
    "NotReady",
    "Overloaded",
    "PreconditionFailed",
    "Tls",
    "TlsConfig",
    "Unauthenticated",
    "UnknownHead",
    "UnknownKey",
    "UnknownModel",
    "aio_channel",
    "channel",
    "from_rpc_error",
    "make_input",
]
