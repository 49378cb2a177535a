"""The slim client package: its public surface, its independence from the server's packages,
and its helpers against the real grpc.aio server on loopback (SQLite archive): batches split
at ``max_batch`` in order, ``wait_for_hits`` until HIT or a NotReady deadline, typed errors."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import embark_client
import grpc
import pytest
from embark_client import AsyncEmbarkClient, NotReady, make_input

from embark import errors, vectors
from embark.catalog import Catalog, ModelSpec
from embark.metrics import EmbarkMetrics
from embark.queue.local import LocalBroker, LocalJobQueue
from embark.server.app import Running, start
from embark.service import EmbarkService, Limits
from embark.store.sqlite import SqliteConfig, SqliteStore, open_sqlite_store
from tests.fakes.encoding import FakeEncoding

PACKAGE = Path(embark_client.__file__).parent
TEXT = ModelSpec(
    name="minilm", kind="text", dim=4, revision="rev-t1", oov=vectors.to_bytes([0.5] * 4, 4)
)
LIMITS = Limits(
    max_batch=3,
    max_text_chars=100,
    max_url_chars=100,
    lookup_timeout_s=0.5,
    pending_window_s=60.0,
    pending_window_size=100,
)


def test_all_is_the_public_surface() -> None:
    public = {n for n in dir(embark_client) if not n.startswith("_")}
    assert set(embark_client.__all__) == public


def test_the_client_imports_nothing_of_the_server() -> None:
    allowed = {"embark_client", "embark_api", "grpc", "numpy", "requests"}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            for name in names:
                top = name.split(".")[0]
                stdlib = top in {"__future__", *__import__("sys").stdlib_module_names}
                assert stdlib or top in allowed, f"{path.name} imports {name}"


def test_server_and_client_share_one_error_hierarchy() -> None:
    assert errors.EmbarkError is embark_client.EmbarkError
    assert errors.InvalidInput is embark_client.InvalidInput
    assert issubclass(NotReady, errors.DeadlineExceeded)


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await open_sqlite_store(SqliteConfig(path=tmp_path / "embark.sqlite3"))
    yield store
    await store.close()


@pytest.fixture
async def server(sqlite: SqliteStore) -> AsyncIterator[Running]:
    service = EmbarkService(
        catalog=Catalog({TEXT.name: TEXT}),
        store=sqlite,
        queue=LocalJobQueue(LocalBroker(100)),
        encoding=FakeEncoding(dim=TEXT.dim),
        limits=LIMITS,
        metrics=EmbarkMetrics(),
    )
    running = await start(host="127.0.0.1", port=0, max_message_bytes=1 << 20, token="t0k")
    running.servicer.attach(service)
    await running.set_serving(True)
    yield running
    await running.server.stop(None)


async def test_batches_above_max_batch_are_split_in_order(server: Running) -> None:
    texts = [f"item {i}" for i in range(8)]  # the server takes 3 a call
    inputs = [make_input(text=t) for t in texts]
    async with AsyncEmbarkClient(f"127.0.0.1:{server.port}", token="t0k") as unsplit:
        with pytest.raises(embark_client.InvalidInput):
            await unsplit.get_many(TEXT.name, inputs)
    async with AsyncEmbarkClient(f"127.0.0.1:{server.port}", token="t0k", max_batch=3) as c:
        results = await c.get_many(TEXT.name, inputs, wait_ms=2000)
        singles = [await c.get(TEXT.name, text=t) for t in texts]
    assert [r.status for r in results] == ["HIT"] * 8
    assert [r.key for r in results] == [s.key for s in singles]


async def test_wait_for_hits_until_hit_or_not_ready(server: Running, sqlite: SqliteStore) -> None:
    inputs = [make_input(text="soon"), make_input(text="also soon")]
    async with AsyncEmbarkClient(f"127.0.0.1:{server.port}", token="t0k") as client:
        with pytest.raises(NotReady) as late:
            await client.wait_for_hits(TEXT.name, inputs, deadline_s=0.3, poll_s=0.05)
        assert [r.status for r in late.value.results] == ["PENDING", "PENDING"]

        async def store_them_later() -> None:  # what KFC does
            await asyncio.sleep(0.2)
            await client.get_many(TEXT.name, inputs, wait_ms=2000)

        writer = asyncio.create_task(store_them_later())
        results = await client.wait_for_hits(TEXT.name, inputs, deadline_s=10, poll_s=0.05)
        await writer
    assert [r.status for r in results] == ["HIT", "HIT"]


async def test_typed_errors(server: Running) -> None:
    target = f"127.0.0.1:{server.port}"
    async with AsyncEmbarkClient(target) as anonymous:
        with pytest.raises(embark_client.Unauthenticated) as denied:
            await anonymous.get(TEXT.name, text="x")
        assert denied.value.code == grpc.StatusCode.UNAUTHENTICATED
    async with AsyncEmbarkClient(target, token="t0k") as client:
        with pytest.raises(embark_client.UnknownModel):
            await client.get("nope", text="x")
        with pytest.raises(embark_client.InvalidInput):
            await client.get(TEXT.name, text="")
