"""Categorize: a head applied to a cached embedding. On a HIT this is one archive lookup (the
same ``EmbarkService.get_many`` as GetEmbedding) and a mat-vec + softmax; anything but a HIT
answers its status with no categories (the OOV vector is never categorized).

Heads are loaded at start from the heads directory and again on SIGHUP (`kill -HUP`,
`docker kill -s HUP`, Nomad's change_mode "signal"), without a restart: calls in flight finish
with the heads they started with. Each load checks the heads against the catalog: a head bound to
another model revision is refused at load (logged) and at call time (FAILED_PRECONDITION), an
unknown head is NOT_FOUND.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from embark import vectors
from embark.catalog import Catalog
from embark.errors import EmbarkError, InvalidInput, PreconditionFailed, UnknownHead
from embark.heads.artifact import Head, check_revision, latest_heads, load_head, top_k
from embark.metrics import EmbarkMetrics
from embark.service import EmbarkService
from embark_api.v1 import embark_pb2, inputs_pb2

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class HeadRegistry:
    """Heads that may serve, and the names refused at load with the reason."""

    heads: Mapping[str, Head] = field(default_factory=dict)
    refused: Mapping[str, str] = field(default_factory=dict)

    def require(self, name: str) -> Head:
        if (head := self.heads.get(name)) is not None:
            return head
        if (reason := self.refused.get(name)) is not None:
            raise PreconditionFailed(reason)
        known = ", ".join(sorted(self.heads)) or "none"
        raise UnknownHead(f"unknown head {name!r}; loaded heads: {known}")


def load_registry(directory: Path, catalog: Catalog) -> HeadRegistry:
    """Each head's latest version under ``directory``, validated against ``catalog``. A head
    that fails to load or is bound to another revision is refused (and logged), never fatal:
    the other heads and the embedding RPCs keep serving."""
    heads: dict[str, Head] = {}
    refused: dict[str, str] = {}
    for path in latest_heads(directory):
        name = path.parent.name
        try:
            head = load_head(path)
            check_revision(head, catalog)
        except EmbarkError as exc:
            log.error("head %s refused: %s", name, exc.message)  # noqa: TRY400 (no traceback)
            refused[name] = f"head {name!r} is not served: {exc.message}"
            continue
        heads[name] = head
        log.info(
            "head %s v%d: %d labels on %s@%s",
            name,
            head.version,
            len(head.labels),
            head.model,
            head.revision,
        )
    if not heads and not refused:
        log.info("no categorizer heads under %s", directory)
    return HeadRegistry(heads, refused)


class CategorizeService:
    def __init__(
        self,
        embark: EmbarkService,
        registry: HeadRegistry,
        *,
        max_top_k: int = 100,
        metrics: EmbarkMetrics | None = None,
    ):
        self._embark = embark
        self._max_top_k = max_top_k
        self._metrics = metrics
        self._registry = HeadRegistry()
        self.replace(registry)

    @property
    def registry(self) -> HeadRegistry:
        return self._registry

    def replace(self, registry: HeadRegistry) -> None:
        """Serve ``registry`` from the next call on (one reference swap: a call in flight keeps
        the head it already holds)."""
        self._registry = registry
        if self._metrics is not None:
            self._metrics.heads_loaded.set(len(registry.heads))
            self._metrics.heads_refused.set(len(registry.refused))

    def reload(self, directory: Path) -> None:
        """Load ``directory`` again against the current catalog and serve it from the next call
        (SIGHUP: ``embark.catalog.reload_on_sighup``)."""
        self.replace(load_registry(directory, self._embark.catalog))
        if self._metrics is not None:
            self._metrics.heads_reloads.inc()
        log.info(
            "heads reloaded from %s: serving %s",
            directory,
            ", ".join(sorted(self._registry.heads)) or "none",
        )

    async def categorize(
        self,
        head_name: str,
        item: inputs_pb2.Input,
        *,
        k: int = 0,
        wait_ms: int = 0,
        budget_s: float | None = None,
    ) -> embark_pb2.CategorizeResponse:
        """Top-k labels of ``item`` on a HIT; otherwise its status with no categories.
        ``wait_ms`` and ``budget_s`` mean what they mean to ``EmbarkService.get_many``."""
        head = self._registry.require(head_name)
        # Checked per call too: the catalog a service runs with is the one it was built with,
        # but a head must never meet vectors of another revision whatever the wiring.
        check_revision(head, self._embark.catalog)
        if k < 0 or k > self._max_top_k:
            raise InvalidInput(f"top_k must be between 0 and {self._max_top_k}, got {k}")
        [answer] = await self._embark.get_many(head.model, [item], wait_ms, budget_s=budget_s)
        if self._metrics is not None:
            status = embark_pb2.Status.Name(answer.status)
            self._metrics.categorize_answers.labels(head_name, status).inc()
        response = embark_pb2.CategorizeResponse(
            status=answer.status, model=answer.model, revision=answer.revision, reason=answer.reason
        )
        if answer.status != embark_pb2.Status.HIT:
            return response
        vector = vectors.from_bytes(answer.vector, answer.dim)
        text = item.text if item.WhichOneof("kind") == "text" else None
        probabilities = head.probabilities(vector, text)
        for label, p in top_k(probabilities, head.labels, k or DEFAULT_TOP_K):
            response.categories.add(label=label, probability=p)
        return response
