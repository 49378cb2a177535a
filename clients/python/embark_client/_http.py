"""``HttpEmbarkClient``: the HTTP front's native ``/embed`` route with ``requests``, for callers
that cannot open gRPC (proxies, firewalls). Same answers as ``EmbarkClient.get_many``; HTTP
errors become the same typed errors. (OpenAI-schema callers use the openai SDK instead.)"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TypeVar

import requests

from embark_client._errors import (
    BackendUnavailable,
    DeadlineExceeded,
    EmbarkError,
    InvalidInput,
    Overloaded,
    Unauthenticated,
    UnknownModel,
)
from embark_client._results import EmbeddingResult

_BY_STATUS: dict[int, type[EmbarkError]] = {
    400: InvalidInput,
    401: Unauthenticated,
    404: UnknownModel,
    413: InvalidInput,
    429: Overloaded,
    503: BackendUnavailable,
    504: DeadlineExceeded,
}
_Self = TypeVar("_Self")


class HttpEmbarkClient:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        timeout_s: float = 5.0,
        token: str | None = None,
        verify: bool | str = True,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self._session = requests.Session()
        self._session.verify = verify  # a CA bundle path for a private CA
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"

    def get_many(
        self, model: str, items: Sequence[str], *, wait_ms: int = 0, dtype: str = "float32"
    ) -> list[EmbeddingResult]:
        """Texts (or image URLs, for an image model) in; one result per item, in order."""
        body: dict[str, Any] = {
            "model": model,
            "input": list(items),
            "wait_ms": wait_ms,
            "encoding_format": "base64",
            "output_dtype": dtype,
        }
        response = self._session.post(
            f"{self._base}/embed", json=body, timeout=self._timeout_s + wait_ms / 1000
        )
        doc: dict[str, Any] = response.json()
        if response.status_code != 200:
            message = doc.get("error", {}).get("message", response.reason)
            raise _BY_STATUS.get(response.status_code, EmbarkError)(message)
        return [
            EmbeddingResult(
                d["status"],
                doc["model"],
                doc["revision"],
                doc["dim"],
                d["key"],
                d["reason"],
                base64.b64decode(d["embedding"]),
                dtype,
            )
            for d in doc["data"]
        ]

    def close(self) -> None:
        self._session.close()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
