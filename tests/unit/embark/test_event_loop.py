"""EMBARK_EVENT_LOOP: `embark serve` runs on the loop it names, and says so when uvloop is
asked for but missing instead of failing at import."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from embark.errors import PreconditionFailed
from embark.server import loop
from embark.settings import EmbarkSettings


async def loop_type() -> type[asyncio.AbstractEventLoop]:
    return type(asyncio.get_running_loop())


def test_uvloop_is_the_default_and_runs_the_server_coroutine() -> None:
    chosen = EmbarkSettings().event_loop
    assert chosen == "uvloop"
    assert loop.run(loop_type(), chosen) is uvloop.Loop


def test_asyncio_runs_the_standard_loop() -> None:
    assert not issubclass(loop.run(loop_type(), "asyncio"), uvloop.Loop)


def test_a_missing_uvloop_is_a_clear_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    with pytest.raises(PreconditionFailed, match="EMBARK_EVENT_LOOP=asyncio"):
        loop.run(loop_type(), "uvloop")


def test_an_unknown_loop_is_refused_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBARK_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="event_loop"):
        EmbarkSettings()
