"""Categorize: a head applied to a cached embedding. On a HIT this is one archive lookup (the
same ``EmbarkService.get_many`` as GetEmbedding) and a mat-vec + softmax; anything but a HIT
answers its status with no categories (the OOV vector is never categorized).

``categorize_many`` answers a batch with one archive lookup and one mat-mul (BatchCategorize,
``POST /categorize``); ``Categorize`` is a batch of one. ``min_probability`` abstains: a HIT
whose best label is less probable answers UNCERTAIN, with the same top candidates. A head whose
labels are all HS chapters also answers each label's section and the most probable section
(the sum of its chapters' probabilities). Per head, the metrics count answers by status
(UNCERTAIN = abstentions), time each call, and count the top label served.

Heads are loaded at start from the heads directory and again on SIGHUP (`kill -HUP`,
`docker kill -s HUP`, Nomad's change_mode "signal"), without a restart: calls in flight finish
with the heads they started with. Each load checks the heads against the catalog: a head bound to
another model revision is refused at load (logged) and at call time (FAILED_PRECONDITION), an
unknown head is NOT_FOUND.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from embark import vectors
from embark.catalog import Catalog
from embark.errors import EmbarkError, InvalidInput, PreconditionFailed, UnknownHead
from embark.heads.artifact import Head, check_revision, latest_heads, load_head, softmax, top_k
from embark.heads.dataset import DatasetError, section_of, section_title
from embark.metrics import EmbarkMetrics
from embark.service import EmbarkService
from embark_api.v1 import embark_pb2, inputs_pb2

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 5


def chapter_sections(labels: Sequence[str]) -> tuple[str, ...] | None:
    """Each label's HS section when every label is a two-digit HS chapter; else None."""
    if not all(len(label) == 2 and label.isdigit() for label in labels):
        return None
    try:
        return tuple(section_of(label) for label in labels)
    except DatasetError:
        return None


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
        min_probability: float = 0.0,
    ) -> embark_pb2.CategorizeResponse:
        """One input: ``categorize_many`` with a batch of one."""
        [answer] = await self.categorize_many(
            head_name,
            [item],
            k=k,
            wait_ms=wait_ms,
            budget_s=budget_s,
            min_probability=min_probability,
        )
        return answer

    async def categorize_many(
        self,
        head_name: str,
        items: Sequence[inputs_pb2.Input],
        *,
        k: int = 0,
        wait_ms: int = 0,
        budget_s: float | None = None,
        min_probability: float = 0.0,
    ) -> list[embark_pb2.CategorizeResponse]:
        """Top-k labels of each input on a HIT (UNCERTAIN below ``min_probability``); otherwise
        its status with no categories. ``wait_ms`` and ``budget_s`` mean what they mean to
        ``EmbarkService.get_many`` (which also bounds the batch size)."""
        started = time.perf_counter()
        head = self._registry.require(head_name)
        # Checked per call too: the catalog a service runs with is the one it was built with,
        # but a head must never meet vectors of another revision whatever the wiring.
        check_revision(head, self._embark.catalog)
        if k < 0 or k > self._max_top_k:
            raise InvalidInput(f"top_k must be between 0 and {self._max_top_k}, got {k}")
        if not 0.0 <= min_probability <= 1.0:  # also refuses NaN
            raise InvalidInput(f"min_probability must be within [0, 1], got {min_probability}")
        answers = await self._embark.get_many(head.model, list(items), wait_ms, budget_s=budget_s)
        responses = [
            embark_pb2.CategorizeResponse(
                status=a.status, model=a.model, revision=a.revision, reason=a.reason
            )
            for a in answers
        ]
        hits = [i for i, a in enumerate(answers) if a.status == embark_pb2.Status.HIT]
        if hits:
            matrix = np.stack([vectors.from_bytes(answers[i].vector, answers[i].dim) for i in hits])
            texts = [_text_of(items[i]) for i in hits]
            probabilities = softmax(head.batch_logits(matrix, texts))
            sections = chapter_sections(head.labels)
            for row, i in enumerate(hits):
                self._fill(responses[i], head, probabilities[row], sections, k, min_probability)
        self._count(head_name, responses, time.perf_counter() - started)
        return responses

    @staticmethod
    def _fill(
        response: embark_pb2.CategorizeResponse,
        head: Head,
        probabilities: npt.NDArray[np.float32],
        sections: tuple[str, ...] | None,
        k: int,
        min_probability: float,
    ) -> None:
        best = top_k(probabilities, head.labels, k or DEFAULT_TOP_K)
        if best and best[0][1] < min_probability:
            response.status = embark_pb2.Status.UNCERTAIN
            response.reason = (
                f"best label {best[0][0]} at {best[0][1]:.3f} < min_probability {min_probability}"
            )
        index = {label: i for i, label in enumerate(head.labels)}
        for label, p in best:
            section = sections[index[label]] if sections else ""
            response.categories.add(label=label, probability=p, section=section)
        if sections:
            mass: dict[str, float] = {}
            for section, p in zip(sections, probabilities.tolist(), strict=True):
                mass[section] = mass.get(section, 0.0) + p
            name = max(mass, key=mass.__getitem__)
            response.section.label, response.section.probability = name, mass[name]
            response.section_title = section_title(name)

    def _count(
        self, head_name: str, responses: Sequence[embark_pb2.CategorizeResponse], seconds: float
    ) -> None:
        if self._metrics is None:
            return
        self._metrics.categorize_seconds.labels(head_name).observe(seconds)
        for response in responses:
            status = embark_pb2.Status.Name(response.status)
            self._metrics.categorize_answers.labels(head_name, status).inc()
            if response.categories:
                self._metrics.categorize_labels.labels(
                    head_name, response.categories[0].label
                ).inc()


def _text_of(item: inputs_pb2.Input) -> str | None:
    return item.text if item.WhichOneof("kind") == "text" else None
