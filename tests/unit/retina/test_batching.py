"""Micro-batching across calls (retina.batching) and through RetinaService: merged batches give
the same vectors as unbatched inference, batches respect their size, and one item's failure
stays that item's (or, when the model itself is broken, every call's)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from embark_api.v1 import inputs_pb2, retina_pb2
from retina.batching import INFERENCE_FAILED, MicroBatcher, infer_isolating_failures
from retina.errors import ItemFailed
from retina.service import RetinaService
from retina.settings import RetinaSettings
from tests.fakes.encoder import FakeEncoder, fake_vector

DIM = 8


class PoisonEncoder(FakeEncoder):
    """Fails any batch that contains a poisoned input (as a model bug on one input would)."""

    def __init__(self, poison: frozenset[str | bytes] = frozenset({"poison"})) -> None:
        super().__init__(dim=DIM)
        self.poison = poison

    def infer(self, batch: Sequence[str | bytes]) -> npt.NDArray[np.float32]:
        if any(item in self.poison for item in batch):
            self.batches.append(len(batch))
            raise ValueError("the model cannot digest this input")
        return super().infer(batch)


class GatedEncoder(FakeEncoder):
    """Blocks in ``infer`` until ``release`` is set, so tests can queue calls behind a batch."""

    def __init__(self) -> None:
        super().__init__(dim=DIM)
        self.entered = threading.Event()
        self.release = threading.Event()

    def infer(self, batch: Sequence[str | bytes]) -> npt.NDArray[np.float32]:
        self.entered.set()
        self.release.wait(timeout=10)
        return super().infer(batch)


@pytest.fixture
def pool() -> Any:
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


def make_batcher(
    encoder: FakeEncoder, pool: ThreadPoolExecutor, *, max_items: int = 8, wait: float = 0.05
) -> MicroBatcher:
    return MicroBatcher(
        encoder,
        executor=pool,
        slots=asyncio.Semaphore(1),
        max_items=max_items,
        max_wait_s=wait,
    )


def expected(items: Sequence[str]) -> npt.NDArray[np.float32]:
    return np.stack([fake_vector(i, DIM) for i in items])


async def test_concurrent_calls_share_one_batch_with_unbatched_results(
    pool: ThreadPoolExecutor,
) -> None:
    encoder = FakeEncoder(dim=DIM)
    batcher = make_batcher(encoder, pool, max_items=16)
    calls = [["a", "b"], ["c"], ["d", "e", "f"]]
    try:
        results = await asyncio.gather(*(batcher.submit(c) for c in calls))
    finally:
        await batcher.close()
    for call, result in zip(calls, results, strict=True):
        np.testing.assert_array_equal(result.vectors, expected(call))
        assert result.failed == {}
    assert encoder.batches == [6]  # one run for the three calls


async def test_batches_never_exceed_max_items(pool: ThreadPoolExecutor) -> None:
    encoder = FakeEncoder(dim=DIM)
    batcher = make_batcher(encoder, pool, max_items=3, wait=0.0)
    items = [f"t{i}" for i in range(10)]
    try:
        result = await batcher.submit(items)
    finally:
        await batcher.close()
    np.testing.assert_array_equal(result.vectors, expected(items))
    assert encoder.batches == [3, 3, 3, 1]


async def test_items_queue_while_the_slot_is_busy(pool: ThreadPoolExecutor) -> None:
    encoder = GatedEncoder()
    batcher = make_batcher(encoder, pool, max_items=32, wait=0.0)
    try:
        first = asyncio.create_task(batcher.submit(["first"]))
        await asyncio.to_thread(encoder.entered.wait, 5)
        # The slot is busy: these arrive one by one and must leave as one batch.
        rest = [asyncio.create_task(batcher.submit([f"r{i}"])) for i in range(5)]
        await asyncio.sleep(0.05)
        encoder.release.set()
        await first
        results = await asyncio.gather(*rest)
    finally:
        encoder.release.set()
        await batcher.close()
    assert encoder.batches == [1, 5]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result.vectors, expected([f"r{i}"]))


async def test_a_failing_item_fails_alone_and_other_calls_are_untouched(
    pool: ThreadPoolExecutor,
) -> None:
    encoder = PoisonEncoder()
    batcher = make_batcher(encoder, pool)
    try:
        mixed, clean = await asyncio.gather(
            batcher.submit(["a", "poison", "b"]), batcher.submit(["c"])
        )
    finally:
        await batcher.close()
    assert set(mixed.failed) == {1}
    assert mixed.failed[1].reason == INFERENCE_FAILED
    np.testing.assert_array_equal(mixed.vectors[[0, 2]], expected(["a", "b"]))
    np.testing.assert_array_equal(clean.vectors, expected(["c"]))
    assert clean.failed == {}


async def test_a_broken_model_fails_every_call_of_the_batch(pool: ThreadPoolExecutor) -> None:
    encoder = PoisonEncoder(poison=frozenset({"x", "y"}))
    batcher = make_batcher(encoder, pool)
    try:
        outcomes = await asyncio.gather(
            batcher.submit(["x"]), batcher.submit(["y"]), return_exceptions=True
        )
    finally:
        await batcher.close()
    assert all(isinstance(o, ValueError) for o in outcomes)


def test_isolation_returns_per_item_failures() -> None:
    rows = infer_isolating_failures(PoisonEncoder(), ["a", "poison"])
    assert isinstance(rows[1], ItemFailed)
    np.testing.assert_array_equal(rows[0], fake_vector("a", DIM))


def test_a_wrong_shape_from_the_encoder_is_an_error() -> None:
    class Short(FakeEncoder):
        def infer(self, batch: Sequence[str | bytes]) -> npt.NDArray[np.float32]:
            return super().infer(batch)[:-1]

    with pytest.raises(RuntimeError, match="shape"):
        infer_isolating_failures(Short(dim=DIM), ["a", "b"])


def test_a_single_item_that_fails_gets_a_retriable_item_failure() -> None:
    # Alone it cannot tell a poison input from a broken model: its caller retries it, bounded.
    [row] = infer_isolating_failures(PoisonEncoder(), ["poison"])
    assert isinstance(row, ItemFailed)
    assert (row.reason, row.retriable) == (INFERENCE_FAILED, True)


async def test_a_cancelled_call_is_not_inferred(pool: ThreadPoolExecutor) -> None:
    encoder = GatedEncoder()
    batcher = make_batcher(encoder, pool, wait=0.0)
    try:
        first = asyncio.create_task(batcher.submit(["first"]))
        await asyncio.to_thread(encoder.entered.wait, 5)
        gone = asyncio.create_task(batcher.submit(["gone-1", "gone-2"]))
        kept = asyncio.create_task(batcher.submit(["kept"]))
        await asyncio.sleep(0.02)
        gone.cancel()
        encoder.release.set()
        await first
        result = await kept
    finally:
        encoder.release.set()
        await batcher.close()
    np.testing.assert_array_equal(result.vectors, expected(["kept"]))
    assert encoder.batches == [1, 1]


async def test_close_fails_queued_calls(pool: ThreadPoolExecutor) -> None:
    encoder = GatedEncoder()
    batcher = make_batcher(encoder, pool, wait=0.0)
    first = asyncio.create_task(batcher.submit(["first"]))
    await asyncio.to_thread(encoder.entered.wait, 5)
    queued = asyncio.create_task(batcher.submit(["queued"]))
    await asyncio.sleep(0.02)
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0.02)
    encoder.release.set()
    await closing
    await first  # the running batch finished
    with pytest.raises(RuntimeError, match="closed"):
        await queued
    with pytest.raises(RuntimeError, match="closed"):
        await batcher.submit(["late"])


def test_settings_bound_the_batcher() -> None:
    with pytest.raises(ValueError, match="max_items"):
        MicroBatcher(
            FakeEncoder(),
            executor=ThreadPoolExecutor(1),
            slots=asyncio.Semaphore(1),
            max_items=0,
            max_wait_s=0,
        )


# --- through RetinaService ------------------------------------------------------------------


@pytest.fixture
def make_settings(monkeypatch: pytest.MonkeyPatch) -> Callable[..., RetinaSettings]:
    for name in list(os.environ):
        if name.startswith("RETINA_"):
            monkeypatch.delenv(name)
    return lambda **overrides: RetinaSettings(**overrides)


@pytest.fixture
async def poison_service(
    make_settings: Callable[..., RetinaSettings],
) -> AsyncIterator[tuple[RetinaService, PoisonEncoder]]:
    encoder = PoisonEncoder()
    service = RetinaService({encoder.name: encoder}, make_settings(batch_max_wait_ms=50))
    yield service, encoder
    await service.close()


def request(model: str, *texts: str) -> retina_pb2.EmbedRequest:
    return retina_pb2.EmbedRequest(model=model, inputs=[inputs_pb2.Input(text=t) for t in texts])


async def test_service_batches_concurrent_calls_and_isolates_a_poisoned_item(
    poison_service: tuple[RetinaService, PoisonEncoder],
) -> None:
    service, encoder = poison_service
    calls = [("a", "b"), ("poison", "c"), ("d",)]
    responses = await asyncio.gather(*(service.embed(request(encoder.name, *c)) for c in calls))
    for call, response in zip(calls, responses, strict=True):
        for text, result in zip(call, response.results, strict=True):
            if text == "poison":
                assert result.error.reason == INFERENCE_FAILED
            else:
                got = np.frombuffer(result.vector, dtype="<f4")
                np.testing.assert_array_equal(got, fake_vector(text, DIM))
    # The merged batch failed once, then every item ran alone.
    assert encoder.batches[0] == 5


async def test_service_batched_results_equal_unbatched(
    make_settings: Callable[..., RetinaSettings],
) -> None:
    encoder = FakeEncoder(dim=DIM)
    texts = [f"text {i}" for i in range(20)]
    service = RetinaService(
        {encoder.name: encoder}, make_settings(batch_max_wait_ms=20, infer_chunk_items=8)
    )
    try:
        alone = [await service.embed(request(encoder.name, t)) for t in texts]
        together = await asyncio.gather(*(service.embed(request(encoder.name, t)) for t in texts))
    finally:
        await service.close()
    assert [r.results[0].vector for r in alone] == [r.results[0].vector for r in together]
    assert max(encoder.batches) == 8  # merged, within the configured size
