"""Fakes for unit tests only (never used by integration tests or the services): a deterministic
encoder behind the ``Encoding`` protocol, with switches for the failures tests need."""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np

from embark.errors import BackendUnavailable
from embark_api.v1 import inputs_pb2, retina_pb2


def fake_vector(text: str, dim: int) -> bytes:
    """A unit vector derived from the input's bytes: same input, same vector."""
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype("<f4")
    unit: bytes = (v / np.linalg.norm(v)).astype("<f4").tobytes()
    return unit


class FakeEncoding:
    """Encodes anything; inputs containing ``fail_marker`` get a permanent per-item error, and
    inputs containing ``flaky_marker`` a retriable one for their first ``flaky_attempts`` tries
    (forever when negative). ``unavailable`` makes every call raise BackendUnavailable;
    ``delay_s`` slows calls."""

    def __init__(
        self,
        dim: int,
        *,
        fail_marker: str = "FAIL",
        flaky_marker: str = "FLAKY",
        flaky_attempts: int = -1,
        delay_s: float = 0.0,
    ) -> None:
        self.dim = dim
        self.fail_marker = fail_marker
        self.flaky_marker = flaky_marker
        self.flaky_attempts = flaky_attempts
        self.delay_s = delay_s
        self.unavailable = False
        self.calls: list[retina_pb2.EmbedRequest] = []
        self.tries: dict[str, int] = {}

    async def embed(self, request: retina_pb2.EmbedRequest) -> retina_pb2.EmbedResponse:
        self.calls.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.unavailable:
            raise BackendUnavailable("fake retina is down")
        return retina_pb2.EmbedResponse(
            model=request.model,
            revision=request.revision,
            dim=self.dim,
            results=[self._one(item) for item in request.inputs],
        )

    def _one(self, item: inputs_pb2.Input) -> retina_pb2.EmbedResult:
        raw = item.text or item.image_url
        self.tries[raw] = self.tries.get(raw, 0) + 1
        if self.flaky_marker in raw and (
            self.flaky_attempts < 0 or self.tries[raw] <= self.flaky_attempts
        ):
            return retina_pb2.EmbedResult(
                error=retina_pb2.ItemError(
                    reason="http_503", message="the image host answered HTTP 503", retriable=True
                )
            )
        if self.fail_marker in raw:
            return retina_pb2.EmbedResult(
                error=retina_pb2.ItemError(reason="fake_failure", message=f"cannot encode {raw!r}")
            )
        return retina_pb2.EmbedResult(vector=fake_vector(raw, self.dim))
