"""The Python client SDK, kept importable from here for compatibility: it lives in the slim
``embark-client`` distribution (``clients/python/``, package ``embark_client``), which the server
package depends on. New code imports ``embark_client``."""

from __future__ import annotations

from embark_client import (
    AsyncEmbarkClient,
    CategorizeResult,
    EmbarkClient,
    EmbeddingResult,
    make_input,
)
from embark_client._client import DEFAULT_MAX_MESSAGE_BYTES

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "AsyncEmbarkClient",
    "CategorizeResult",
    "EmbarkClient",
    "EmbeddingResult",
    "make_input",
]
