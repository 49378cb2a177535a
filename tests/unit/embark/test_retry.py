"""The one retry policy: full jitter within the exponential cap, bounded by attempts or time,
only retriable errors retried, interruptible by the stop event."""

from __future__ import annotations

import asyncio

import pytest

from embark.errors import BackendUnavailable, EmbarkError, InvalidInput
from embark.retry import Backoff, Stopping


async def run(policy: Backoff, errors: list[EmbarkError], stop: asyncio.Event | None = None) -> int:
    """Drive ``policy`` over a step that raises ``errors`` in turn, then succeeds; the calls."""
    calls = 0
    async for attempt in policy.retrying(what="test", stop=stop):
        with attempt:
            calls += 1
            if errors:
                raise errors.pop(0)
    return calls


async def test_retries_retriable_errors_until_success_with_capped_jittered_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    policy = Backoff(initial_s=0.001, max_s=0.004)

    assert await run(policy, [BackendUnavailable("down")] * 5) == 6
    assert len(waits) == 5
    assert all(0 <= w <= 0.004 for w in waits)


async def test_a_permanent_error_is_raised_at_once() -> None:
    errors: list[EmbarkError] = [InvalidInput("bad"), BackendUnavailable("down")]
    with pytest.raises(InvalidInput):
        await run(Backoff(initial_s=0.001, max_s=0.001), errors)
    assert len(errors) == 1  # the retriable one after it was never reached


async def test_attempts_bound_the_retries_and_the_last_error_is_raised() -> None:
    errors: list[EmbarkError] = [BackendUnavailable(f"down {i}") for i in (1, 2, 3, 4)]
    with pytest.raises(BackendUnavailable, match="down 3"):
        await run(Backoff(initial_s=0.001, max_s=0.001, attempts=3), errors)


async def test_a_stop_interrupts_the_wait() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    with pytest.raises(Stopping):
        await run(Backoff(initial_s=60.0, max_s=60.0), [BackendUnavailable("down")] * 2, stop)
