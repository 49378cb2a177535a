"""`embark dev`: EmbArk's gRPC front, the KFC loop and the encoders in one process, on the
embedded backends (a SQLite file under the data directory, the in-process queue).

The same gRPC port also serves Retina's Embed, so `grpcurl` can reach the encoders directly.
The first line on stdout is machine-readable: ``embark dev listening on HOST:PORT``; the second
names the HTTP front (OpenAI-compatible /v1/embeddings): ``embark dev http on http://HOST:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from embark.catalog import Catalog
from embark.errors import BackendUnavailable
from embark.metrics import EmbarkMetrics
from embark.queue.local import LocalBroker, LocalJobConsumer, LocalJobQueue
from embark.server.app import Running, start, wait_for_signal, watch_readiness
from embark.server.main import attach_service, shutdown, start_http
from embark.settings import EmbarkSettings, QueueSettings, StoreSettings
from embark.similar.sqlite import open_sqlite_index
from embark.store.sqlite import SqliteConfig, open_sqlite_store
from embark_api.v1 import retina_pb2, retina_pb2_grpc
from kfc.metrics import KfcMetrics
from kfc.settings import KfcSettings
from kfc.worker import Worker
from onebox.encoding import InProcessEncoding
from retina.artifacts.build import load_encoders
from retina.fetch import ImageFetcher
from retina.server import RetinaServicer
from retina.service import RetinaService
from retina.settings import RetinaSettings

log = logging.getLogger(__name__)

# vLLM's and most OpenAI-compatible servers' default, so client examples work unchanged.
DEFAULT_HTTP_PORT = 8000

RETINA_SERVICE_NAME: str = retina_pb2.DESCRIPTOR.services_by_name["Retina"].full_name


@dataclass(frozen=True)
class DevConfig:
    data_dir: Path
    artifacts: Path
    host: str = "127.0.0.1"
    port: int = 50051
    # Demo images are served from loopback; a dev box is the one place that is fine.
    allow_private_addresses: bool = False
    # Categorizer heads (`embark heads train`), loaded at start.
    heads_dir: Path = Path("heads")
    # The HTTP front (OpenAI-compatible /v1/embeddings); None: off.
    http_port: int | None = DEFAULT_HTTP_PORT
    # The default port may be taken (another `embark dev`, a test run): then any free port,
    # printed. A port the user asked for is never silently replaced.
    http_port_fallback: bool = True


def dev(args: argparse.Namespace) -> int:
    # --http-port, else EMBARK_HTTP_PORT (as `embark serve` reads it), else the default.
    asked = getattr(args, "http_port", None)
    if asked is None and (env := os.environ.get("EMBARK_HTTP_PORT")):
        asked = int(env)
    config = DevConfig(
        Path(args.data_dir),
        Path(args.artifacts),
        host=getattr(args, "host", "127.0.0.1"),
        port=args.port,
        allow_private_addresses=args.allow_private_addresses,
        heads_dir=Path(getattr(args, "heads_dir", "heads")),
        http_port=DEFAULT_HTTP_PORT if asked is None else asked,
        http_port_fallback=asked is None,
    )
    asyncio.run(_serve_until_signal(config))
    return 0


async def _serve_until_signal(config: DevConfig) -> None:
    async with running_dev(config) as running:
        print(f"embark dev listening on {config.host}:{running.port}", flush=True)
        if running.http_port is not None:
            print(f"embark dev http on http://{config.host}:{running.http_port}", flush=True)
        await wait_for_signal()


def _report_death(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the consumer loop failed; health is NOT_SERVING", exc_info=task.exception())


@contextlib.asynccontextmanager
async def running_dev(config: DevConfig) -> AsyncIterator[Running]:
    """Start everything; yield the running server; stop everything (KFC finishes its batch)."""
    esettings = EmbarkSettings(
        catalog=config.artifacts / "catalog.json",
        host=config.host,
        port=config.port,
        store=StoreSettings(sqlite=SqliteConfig(path=config.data_dir / "embark.sqlite3")),
        queue=QueueSettings(backend="local"),
        heads_dir=config.heads_dir,
    )
    rsettings = RetinaSettings(artifacts_dir=config.artifacts)
    if config.allow_private_addresses:
        rsettings = rsettings.model_copy(
            update={"fetch": rsettings.fetch.model_copy(update={"allow_private": True})}
        )
    kfc_settings = KfcSettings(queue=QueueSettings(backend="local"))
    catalog = Catalog.load(esettings.catalog)
    loop = asyncio.get_running_loop()
    encoders = await loop.run_in_executor(None, load_encoders, config.artifacts, rsettings)
    fetcher = ImageFetcher(rsettings.fetch)
    retina = RetinaService(encoders, rsettings, images=fetcher)
    encoding = InProcessEncoding(retina)
    store = await open_sqlite_store(esettings.store.sqlite)
    index = await open_sqlite_index(esettings.store.sqlite.path)
    broker = LocalBroker(esettings.queue.local_max_buffered)

    def add_retina(server: grpc.aio.Server) -> list[str]:
        servicer = RetinaServicer()
        servicer.attach(retina)
        retina_pb2_grpc.add_RetinaServicer_to_server(servicer, server)
        return [RETINA_SERVICE_NAME]

    metrics = EmbarkMetrics()
    running = await start(
        host=config.host,
        port=config.port,
        max_message_bytes=esettings.max_message_bytes,
        extra=add_retina,
        metrics=metrics,
    )
    if config.http_port is not None:
        await _start_http(running, esettings, config, catalog, metrics)
    # EmbArk reads through its LRU; KFC below writes to the store itself.
    attach_service(
        running,
        esettings,
        catalog=catalog,
        store=store,
        queue=LocalJobQueue(broker),
        encoding=encoding,
        metrics=metrics,
        index=index,
    )
    worker = Worker(
        consumer=LocalJobConsumer(broker),
        store=store,
        encoding=encoding,
        catalog=catalog,
        config=kfc_settings.batch_config(),
        metrics=KfcMetrics(),
    )
    stop = asyncio.Event()
    worker_task = asyncio.create_task(worker.run(stop), name="kfc")

    async def ready() -> None:
        # The one process is ready while its consumer loop runs and makes progress: a dead or
        # stuck loop would leave every miss PENDING behind a SERVING health.
        if worker_task.done():
            raise BackendUnavailable("the consumer loop has stopped")
        if worker.problem is not None:
            raise BackendUnavailable(worker.problem)

    readiness = asyncio.create_task(watch_readiness(running.set_serving, ready))
    worker_task.add_done_callback(_report_death)
    try:
        yield running
    finally:
        readiness.cancel()
        await shutdown(running, esettings.shutdown_grace_s)
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await worker_task
        await retina.close()
        await fetcher.close()
        await index.close()
        await store.close()


async def _start_http(
    running: Running,
    settings: EmbarkSettings,
    config: DevConfig,
    catalog: Catalog,
    metrics: EmbarkMetrics,
) -> None:
    assert config.http_port is not None
    try:
        await start_http(running, settings, catalog=catalog, metrics=metrics, port=config.http_port)
    except OSError as exc:
        if not config.http_port_fallback:
            raise
        log.warning("HTTP port %d is taken (%s); using any free port", config.http_port, exc)
        await start_http(running, settings, catalog=catalog, metrics=metrics, port=0)
