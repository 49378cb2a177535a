"""`kfc run`: the consumer loop as its own process.

Health (gRPC, on ``health_port``) is NOT_SERVING until the store, the queue and Retina answer.
SIGTERM: stop polling, finish the batch in hand (write, then commit), close the consumer (which
leaves the group so its partitions move at once), exit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from embark.backends import open_consumer, open_store, with_backoff
from embark.catalog import Catalog, reload_on_sighup
from embark.encoding import RETINA_CHANNEL_OPTIONS, GrpcEncoding
from embark.errors import BackendUnavailable
from embark.server.app import wait_for_signal, watch_readiness
from embark.store.base import EmbeddingStore
from embark_core.tls import add_port, aio_channel
from kfc.metrics import KfcMetrics
from kfc.settings import KfcSettings
from kfc.worker import Worker

log = logging.getLogger(__name__)


async def run(settings: KfcSettings) -> int:
    """Consume until SIGTERM/SIGINT; the exit code (non-zero when the loop could not go on)."""
    exit_code = 0
    catalog = Catalog.load(settings.catalog)
    metrics = KfcMetrics()
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.host, registry=metrics.registry)
    health_server, health_servicer = await _start_health(settings)
    channel = aio_channel(settings.retina_address, settings.retina_tls, RETINA_CHANNEL_OPTIONS)
    store = await with_backoff("store", lambda: open_store(settings.store))
    consumer = await with_backoff("queue", lambda: open_consumer(settings.queue))
    worker = Worker(
        consumer=consumer,
        store=store,
        encoding=GrpcEncoding(channel, timeout_s=settings.retina_timeout_s),
        catalog=catalog,
        config=settings.batch_config(),
        metrics=metrics,
    )
    stop = asyncio.Event()
    loop_task = asyncio.create_task(worker.run(stop))
    readiness = (
        asyncio.create_task(
            watch_readiness(
                _health_setter(health_servicer), _ReadyToWork(store, channel, worker, loop_task)
            )
        )
        if health_servicer is not None
        else None
    )
    log.info("kfc consuming (models: %s)", ", ".join(catalog))

    def on_hangup(new: Catalog | None) -> None:
        if new is not None:
            worker.reload_catalog(new)

    stop_reloading = reload_on_sighup(settings.catalog, on_hangup)
    signal_task = asyncio.create_task(wait_for_signal())
    await asyncio.wait({loop_task, signal_task}, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    try:
        await loop_task  # finishes the batch in hand
    except Exception:
        # The loop never exits on an error it can recover from; this is a bug. Say so, turn
        # health off and exit non-zero so the orchestrator restarts us.
        log.exception("kfc cannot continue: the consumer loop failed")
        exit_code = 1
    finally:
        stop_reloading()
        signal_task.cancel()
        if readiness is not None:
            readiness.cancel()
        if health_servicer is not None:
            await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await consumer.close()
        await store.close()
        await channel.close(grace=None)
        if health_server is not None:
            await health_server.stop(1.0)
    return exit_code


class _ReadyToWork:
    """Readiness: the loop is running and making progress, and the archive and Retina both
    answer. A KFC that cannot poll, encode or write is alive (it backs off and commits
    nothing) but not ready, and says why."""

    def __init__(
        self,
        store: EmbeddingStore,
        retina: grpc.aio.Channel,
        worker: Worker,
        loop: asyncio.Task[None],
    ) -> None:
        self._store = store
        self._retina = health_pb2_grpc.HealthStub(retina)
        self._worker = worker
        self._loop = loop

    async def __call__(self) -> None:
        if self._loop.done():
            raise BackendUnavailable("the consumer loop has stopped")
        if self._worker.problem is not None:
            raise BackendUnavailable(self._worker.problem)
        await self._store.ping()
        reply = await self._retina.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise BackendUnavailable("retina is not serving")


def _health_setter(servicer: health_aio.HealthServicer) -> Callable[[bool], Awaitable[None]]:
    async def set_serving(ready: bool) -> None:
        status = health_pb2.HealthCheckResponse
        await servicer.set("", status.SERVING if ready else status.NOT_SERVING)

    return set_serving


async def _start_health(
    settings: KfcSettings,
) -> tuple[grpc.aio.Server | None, health_aio.HealthServicer | None]:
    if not settings.health_port:
        return None, None
    server = grpc.aio.server()
    servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    add_port(server, f"{settings.host}:{settings.health_port}", settings.tls)
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    return server, servicer
