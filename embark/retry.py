"""EmbArk's one retry policy: exponential backoff with full jitter (tenacity), for faults that
are retriable (``ServiceError.retriable``), interruptible by a stop event.

Used for connecting to backends at start-up (``embark.backends.with_backoff``), for KFC's
whole-batch retries on backend faults, and for KFC's per-item retries of item faults that may
pass. Full jitter spreads the retries of many consumers (or items) that failed together, so a
recovering backend is not hit by a synchronized wave.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from embark_api.errors import ServiceError

log = logging.getLogger(__name__)


class Stopping(Exception):
    """Raised out of a backoff sleep when the stop event is set: the caller gives up at once."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniformly in [0, min(max_s,
    initial_s * 2**n)]. ``attempts`` / ``deadline_s`` bound it (None: until stopped)."""

    initial_s: float
    max_s: float
    attempts: int | None = None
    deadline_s: float | None = None

    def retrying(self, *, what: str, stop: asyncio.Event | None = None) -> AsyncRetrying:
        """A tenacity retrying loop over retriable ``ServiceError``s that logs each retry and
        raises ``Stopping`` from its sleep once ``stop`` is set. When the attempts or the
        deadline run out, the last error is re-raised."""
        bound: stop_base = stop_never
        if self.attempts is not None:
            bound = stop_after_attempt(self.attempts)
        if self.deadline_s is not None:
            bound = bound | stop_after_delay(self.deadline_s)

        async def sleep(seconds: float) -> None:
            if stop is None:
                await asyncio.sleep(seconds)
                return
            try:
                await asyncio.wait_for(stop.wait(), seconds)
            except TimeoutError:
                return
            raise Stopping(what)

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            seconds = state.next_action.sleep if state.next_action else 0.0
            log.warning("%s: %s; retrying in %.1fs", what, error, seconds)

        return AsyncRetrying(
            sleep=sleep,
            stop=bound,
            wait=wait_random_exponential(multiplier=self.initial_s, max=self.max_s),
            retry=retry_if_exception(is_retriable),
            before_sleep=before_sleep,
            reraise=True,
        )


def is_retriable(exc: BaseException) -> bool:
    return isinstance(exc, ServiceError) and exc.retriable
