"""The event loop a serving process runs on (``EMBARK_EVENT_LOOP``): uvloop by default, the
standard library's where uvloop is not installed or not wanted. One function, so the single
process and every worker start their loop the same way."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from embark.errors import PreconditionFailed
from embark.settings import EventLoop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], event_loop: EventLoop) -> T:
    """Run ``main`` to completion on a new loop of the kind ``event_loop`` names."""
    if event_loop == "asyncio":
        return asyncio.run(main)
    try:
        import uvloop
    except ImportError:
        main.close()  # never started: close it, or Python warns it was never awaited
        raise PreconditionFailed(
            "EMBARK_EVENT_LOOP=uvloop, but uvloop is not installed (it has no Windows build);"
            " install it, or set EMBARK_EVENT_LOOP=asyncio"
        ) from None
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
