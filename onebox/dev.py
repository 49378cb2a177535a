"""`embark dev`: EmbArk's gRPC front, the KFC loop and the encoders in one process, on the
embedded backends (a SQLite file under the data directory, the in-process queue).

The same gRPC port also serves Retina's Embed, so `grpcurl` can reach the encoders directly.
The first line on stdout is machine-readable: ``embark dev listening on HOST:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from embark.catalog import Catalog
from embark.metrics import EmbarkMetrics
from embark.queue.local import LocalBroker, LocalJobConsumer, LocalJobQueue
from embark.server.app import Running, start, wait_for_signal
from embark.server.main import attach_service
from embark.settings import EmbarkSettings, QueueSettings, StoreSettings
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


def dev(args: argparse.Namespace) -> int:
    config = DevConfig(
        Path(args.data_dir),
        Path(args.artifacts),
        host=getattr(args, "host", "127.0.0.1"),
        port=args.port,
        allow_private_addresses=args.allow_private_addresses,
        heads_dir=Path(getattr(args, "heads_dir", "heads")),
    )
    asyncio.run(_serve_until_signal(config))
    return 0


async def _serve_until_signal(config: DevConfig) -> None:
    async with running_dev(config) as running:
        print(f"embark dev listening on {config.host}:{running.port}", flush=True)
        await wait_for_signal()


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
    broker = LocalBroker(esettings.queue.local_max_buffered)

    def add_retina(server: grpc.aio.Server) -> list[str]:
        servicer = RetinaServicer()
        servicer.attach(retina)
        retina_pb2_grpc.add_RetinaServicer_to_server(servicer, server)
        return [RETINA_SERVICE_NAME]

    running = await start(
        host=config.host,
        port=config.port,
        max_message_bytes=esettings.max_message_bytes,
        extra=add_retina,
    )
    # EmbArk reads through its LRU; KFC below writes to the store itself.
    attach_service(
        running,
        esettings,
        catalog=catalog,
        store=store,
        queue=LocalJobQueue(broker),
        encoding=encoding,
        metrics=EmbarkMetrics(),
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
    await running.set_serving(True)
    try:
        yield running
    finally:
        await running.set_serving(False)
        await running.server.stop(esettings.shutdown_grace_s)
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await worker_task
        await retina.close()
        await fetcher.close()
        await store.close()
