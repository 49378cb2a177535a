"""CategorizeService on SQLite, the local queue and the fake encoder: HIT answers top-k
labels, misses answer their status with no categories, bad requests raise; SIGHUP reloads the
heads directory."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from embark import vectors
from embark.catalog import Catalog, ModelSpec, reload_on_sighup
from embark.errors import InvalidInput, PreconditionFailed, UnknownHead
from embark.heads.artifact import Head, save_head
from embark.heads.service import CategorizeService, HeadRegistry
from embark.metrics import EmbarkMetrics
from embark.queue.local import LocalBroker, LocalJobQueue
from embark.service import EmbarkService, Limits
from embark.store.sqlite import SqliteConfig, open_sqlite_store
from embark_api.v1 import embark_pb2, inputs_pb2
from tests.fakes.encoding import FakeEncoding

Status = embark_pb2.Status
SPEC = ModelSpec("minilm", "text", 4, "rev-a", vectors.to_bytes([0.5] * 4, 4))
LIMITS = Limits(
    max_batch=8,
    max_text_chars=64,
    max_url_chars=80,
    lookup_timeout_s=0.5,
    pending_window_s=60.0,
    pending_window_size=100,
)


def head(revision: str = "rev-a") -> Head:
    rng = np.random.default_rng(0)
    return Head(
        name="shop",
        version=1,
        labels=tuple("abcdefg"),
        model="minilm",
        revision=revision,
        dim=4,
        weights=rng.standard_normal((7, 4)).astype(np.float32),
        bias=np.zeros(7, dtype=np.float32),
    )


@pytest.fixture
async def categorizer(tmp_path: Path) -> AsyncIterator[CategorizeService]:
    store = await open_sqlite_store(SqliteConfig(path=tmp_path / "e.sqlite3"))
    embark = EmbarkService(
        catalog=Catalog({SPEC.name: SPEC}),
        store=store,
        queue=LocalJobQueue(LocalBroker(max_buffered=100)),
        encoding=FakeEncoding(dim=4),
        limits=LIMITS,
        metrics=EmbarkMetrics(),
    )
    registry = HeadRegistry({"shop": head()}, {"stale": "head 'stale' is not served: rev-old"})
    yield CategorizeService(embark, registry)
    await store.close()


def text(value: str) -> inputs_pb2.Input:
    return inputs_pb2.Input(text=value)


async def test_miss_is_pending_then_read_through_is_a_hit(categorizer: CategorizeService) -> None:
    miss = await categorizer.categorize("shop", text("red shoes"))
    assert (miss.status, list(miss.categories)) == (Status.PENDING, [])
    hit = await categorizer.categorize("shop", text("blue hat"), k=3, wait_ms=2000)
    assert hit.status == Status.HIT
    assert (hit.model, hit.revision) == ("minilm", "rev-a")
    probabilities = [c.probability for c in hit.categories]
    assert len(probabilities) == 3
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1 + 1e-6
    again = await categorizer.categorize("shop", text("blue hat"))
    assert again.status == Status.HIT
    assert len(again.categories) == 5  # the default top_k


async def test_bad_requests(categorizer: CategorizeService) -> None:
    with pytest.raises(UnknownHead):
        await categorizer.categorize("nope", text("x"))
    with pytest.raises(PreconditionFailed, match="rev-old"):
        await categorizer.categorize("stale", text("x"))
    with pytest.raises(InvalidInput, match="empty"):
        await categorizer.categorize("shop", text("   "))
    with pytest.raises(InvalidInput, match="at most 64"):
        await categorizer.categorize("shop", text("x" * 65))
    with pytest.raises(InvalidInput, match="top_k"):
        await categorizer.categorize("shop", text("x"), k=1000)


async def test_a_head_of_another_revision_is_refused_at_call_time(tmp_path: Path) -> None:
    store = await open_sqlite_store(SqliteConfig(path=tmp_path / "e.sqlite3"))
    embark = EmbarkService(
        catalog=Catalog({SPEC.name: SPEC}),
        store=store,
        queue=LocalJobQueue(LocalBroker(max_buffered=10)),
        encoding=None,
        limits=LIMITS,
        metrics=EmbarkMetrics(),
    )
    service = CategorizeService(embark, HeadRegistry({"shop": head("rev-other")}))
    with pytest.raises(PreconditionFailed, match="retrain"):
        await service.categorize("shop", text("x"))
    await store.close()


async def test_sighup_reloads_the_heads_directory_with_metrics(tmp_path: Path) -> None:
    """A real SIGHUP to this process: the directory is read again, the new head serves, the
    gauges and the reload counter follow, and calls are counted by head and status."""
    store = await open_sqlite_store(SqliteConfig(path=tmp_path / "e.sqlite3"))
    metrics = EmbarkMetrics()
    embark = EmbarkService(
        catalog=Catalog({SPEC.name: SPEC}),
        store=store,
        queue=LocalJobQueue(LocalBroker(max_buffered=100)),
        encoding=FakeEncoding(dim=4),
        limits=LIMITS,
        metrics=metrics,
    )
    heads = tmp_path / "heads"
    service = CategorizeService(embark, HeadRegistry(), metrics=metrics)
    # What `embark dev` registers: no catalog to read again, the heads directory reloaded.
    stop = reload_on_sighup(None, lambda _catalog: service.reload(heads))
    try:
        with pytest.raises(UnknownHead):
            await service.categorize("shop", text("red"))
        save_head(head(), heads)
        save_head(dataclasses.replace(head("rev-old"), name="stale"), heads)
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            if "shop" in service.registry.heads:
                break
            await asyncio.sleep(0.01)
        answer = await service.categorize("shop", text("red"), wait_ms=2000)
        assert answer.status == Status.HIT
        with pytest.raises(PreconditionFailed):
            await service.categorize("stale", text("red"))
    finally:
        stop()
        await store.close()
    value = metrics.registry.get_sample_value
    assert value("embark_heads_loaded") == 1
    assert value("embark_heads_refused") == 1
    assert value("embark_heads_reloads_total") == 1
    assert value("embark_categorize_answers_total", {"head": "shop", "status": "HIT"}) == 1


def chapter_head() -> Head:
    """Four HS chapters in two sections: 01, 02 (I) and 84, 85 (XVI)."""
    rng = np.random.default_rng(1)
    return Head(
        name="hs",
        version=1,
        labels=("01", "02", "84", "85"),
        model="minilm",
        revision="rev-a",
        dim=4,
        weights=rng.standard_normal((4, 4)).astype(np.float32),
        bias=np.zeros(4, dtype=np.float32),
    )


async def test_batch_abstain_sections_and_metrics(tmp_path: Path) -> None:
    store = await open_sqlite_store(SqliteConfig(path=tmp_path / "e.sqlite3"))
    metrics = EmbarkMetrics()
    embark = EmbarkService(
        catalog=Catalog({SPEC.name: SPEC}),
        store=store,
        queue=LocalJobQueue(LocalBroker(max_buffered=100)),
        encoding=FakeEncoding(dim=4),
        limits=LIMITS,
        metrics=metrics,
    )
    hs = chapter_head()
    service = CategorizeService(embark, HeadRegistry({"hs": hs, "shop": head()}), metrics=metrics)
    try:
        items = [text("red shoes"), text("blue hat"), text("green tea")]
        first = await service.categorize_many("hs", items[:1])
        assert first[0].status == Status.PENDING
        assert not first[0].categories
        answers = await service.categorize_many("hs", items, k=4, wait_ms=2000)
        assert [a.status for a in answers] == [Status.HIT] * 3
        for item, answer in zip(items, answers, strict=True):
            # the batch answers what one call answers, in order
            single = await service.categorize("hs", item, k=4)
            assert [c.label for c in single.categories] == [c.label for c in answer.categories]
            sections = {c.label: c.section for c in answer.categories}
            assert sections == {"01": "I", "02": "I", "84": "XVI", "85": "XVI"}
            mass = {"I": 0.0, "XVI": 0.0}
            for c in answer.categories:
                mass[c.section] += c.probability
            assert answer.section.label == max(mass, key=mass.__getitem__)
            assert answer.section.probability == pytest.approx(max(mass.values()), abs=1e-5)
            assert answer.section_title
        # abstain: above the best probability -> UNCERTAIN with the same candidates
        best = answers[0].categories[0].probability
        unsure = await service.categorize("hs", items[0], k=4, min_probability=best + 0.01)
        assert unsure.status == Status.UNCERTAIN
        assert [c.label for c in unsure.categories] == [c.label for c in answers[0].categories]
        assert "min_probability" in unsure.reason
        sure = await service.categorize("hs", items[0], min_probability=best - 0.01)
        assert sure.status == Status.HIT
        # labels that are not HS chapters: no sections
        plain = await service.categorize("shop", items[0])
        assert plain.categories[0].section == ""
        assert plain.section.label == ""
        for bad in (-0.1, 1.5, float("nan")):
            with pytest.raises(InvalidInput, match="min_probability"):
                await service.categorize("hs", items[0], min_probability=bad)
        with pytest.raises(InvalidInput, match="at most 8"):
            await service.categorize_many("hs", [text(f"t{i}") for i in range(9)])
    finally:
        await store.close()
    value = metrics.registry.get_sample_value
    assert value("embark_categorize_answers_total", {"head": "hs", "status": "UNCERTAIN"}) == 1
    assert value("embark_categorize_answers_total", {"head": "hs", "status": "PENDING"}) == 1
    assert value("embark_categorize_answers_total", {"head": "hs", "status": "HIT"}) == 7
    labelled = sum(
        value("embark_categorize_labels_total", {"head": "hs", "label": label}) or 0.0
        for label in hs.labels
    )
    assert labelled == 8  # HIT and UNCERTAIN answers count their top label
    assert value("embark_categorize_seconds_count", {"head": "hs"}) == 7  # calls, not answers
