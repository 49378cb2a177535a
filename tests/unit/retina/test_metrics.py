"""Retina's metrics move as Embed calls are made: batch sizes, embed and inference latency, and
items by outcome, per model."""

from __future__ import annotations

import os

import pytest

from embark_api.v1 import inputs_pb2, retina_pb2
from retina.metrics import RetinaMetrics
from retina.service import RetinaService
from retina.settings import RetinaSettings
from tests.fakes.encoder import FakeEncoder


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> RetinaSettings:
    for name in list(os.environ):
        if name.startswith("RETINA_"):
            monkeypatch.delenv(name)
    return RetinaSettings()


def test_metrics_port_is_off_by_default(settings: RetinaSettings) -> None:
    assert settings.metrics_port == 0


async def test_embed_calls_are_measured(settings: RetinaSettings) -> None:
    encoder = FakeEncoder(name="txt", kind="text", dim=4, revision="r1", fail_on={"bad"})
    metrics = RetinaMetrics()
    service = RetinaService({"txt": encoder}, settings, metrics=metrics)
    try:
        for texts in (["a", "b", "bad"], ["c"]):
            await service.embed(
                retina_pb2.EmbedRequest(
                    model="txt", inputs=[inputs_pb2.Input(text=t) for t in texts]
                )
            )
    finally:
        await service.close()

    def sample(name: str, **labels: str) -> float:
        value = metrics.registry.get_sample_value(name, {"model": "txt", **labels})
        assert value is not None, name
        return value

    assert sample("retina_batch_size_count") == 2
    assert sample("retina_batch_size_sum") == 4
    assert sample("retina_embed_seconds_count") == 2
    assert sample("retina_infer_seconds_count") == 2
    assert sample("retina_items_total", outcome="vector") == 3
    assert sample("retina_items_total", outcome="error") == 1
