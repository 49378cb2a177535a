"""The Retina gRPC server: the servicer, the error guard, health, reflection, shutdown.

The servicer only delegates to ``RetinaService.embed``; everything about failures is in the
guard every service is registered through (``embark_core.interceptors.Guard``): a
``RetinaError`` becomes its own gRPC code and message, anything else is logged with its
traceback and answered with a generic INTERNAL.

Readiness: the server starts listening first with health NOT_SERVING (so an orchestrator can
tell "starting" from "dead"), loads the encoders off the event loop, then flips to SERVING.
Embed calls that arrive before that are refused with UNAVAILABLE, which callers retry.
SIGHUP reloads the catalog's encoders without a restart (``_Reloader``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from embark_api.v1 import retina_pb2, retina_pb2_grpc
from embark_core.interceptors import Guard
from embark_core.tls import add_port
from retina.artifacts.build import load_encoders
from retina.errors import ArtifactError
from retina.fetch import ImageFetcher
from retina.metrics import RetinaMetrics
from retina.service import RetinaService
from retina.settings import RetinaSettings

logger = logging.getLogger(__name__)

# grpc-stubs does not declare grpc_health's asyncio servicer (public API since grpcio 1.34).
_AioHealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]

SERVICE_NAME = retina_pb2.DESCRIPTOR.services_by_name["Retina"].full_name


class RetinaServicer(retina_pb2_grpc.RetinaServicer):
    """Delegates Embed to a RetinaService once one is attached (see ``RunningServer``)."""

    def __init__(self) -> None:
        self._service: RetinaService | None = None

    def attach(self, service: RetinaService) -> None:
        self._service = service

    async def Embed(  # noqa: N802 (the generated servicer's method name)
        self,
        request: retina_pb2.EmbedRequest,
        context: grpc.aio.ServicerContext[retina_pb2.EmbedRequest, retina_pb2.EmbedResponse],
    ) -> retina_pb2.EmbedResponse:
        if self._service is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "retina is loading its models")
        return await self._service.embed(request)


class _Health(Protocol):
    """What we use of ``grpc_health.v1.health.aio.HealthServicer``."""

    async def set(
        self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus
    ) -> None: ...

    async def enter_graceful_shutdown(self) -> None: ...


@dataclass(slots=True)
class RunningServer:
    """A started server, NOT_SERVING until ``mark_serving``."""

    server: grpc.aio.Server
    port: int
    servicer: RetinaServicer
    health: _Health

    async def mark_serving(self, service: RetinaService) -> None:
        self.servicer.attach(service)
        for name in ("", SERVICE_NAME):  # "" is the server as a whole
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None) -> None:
        """Report NOT_SERVING (so balancers stop routing here), then let in-flight calls
        finish for up to ``grace`` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_server(settings: RetinaSettings, *, address: str | None = None) -> RunningServer:
    """Listen on ``address`` (default ``settings.host:settings.port``; port 0 picks a free
    one) with health NOT_SERVING and reflection on."""
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
    ]
    server = grpc.aio.server(options=options)
    guard = Guard(server)
    servicer = RetinaServicer()
    retina_pb2_grpc.add_RetinaServicer_to_server(servicer, guard.target)
    health_servicer = _AioHealthServicer()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, guard.target)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = add_port(server, address or f"{settings.host}:{settings.port}", settings.tls)
    await server.start()
    logger.info("retina listening on port %d", port)
    return RunningServer(server=server, port=port, servicer=servicer, health=health_servicer)


async def start_test_server(
    service: RetinaService, settings: RetinaSettings
) -> tuple[grpc.aio.Server, int]:
    """A SERVING server for ``service`` on 127.0.0.1 and a free port (for tests)."""
    running = await start_server(settings, address="127.0.0.1:0")
    await running.mark_serving(service)
    return running.server, running.port


async def serve(settings: RetinaSettings) -> None:
    """Run Retina until SIGTERM or SIGINT. Raises ArtifactError when the models cannot be
    loaded (after shutting the listener down)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    metrics = RetinaMetrics()
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.host, registry=metrics.registry)
    running = await start_server(settings)
    try:
        async with ImageFetcher(settings.fetch) as fetcher:
            try:
                # Opening ONNX sessions blocks for seconds; health must keep answering.
                encoders = await asyncio.to_thread(load_encoders, settings.artifacts_dir, settings)
            except BaseException:
                await running.stop(grace=0)
                raise
            service = RetinaService(encoders, settings, images=fetcher, metrics=metrics)
            reloader = _Reloader(running, service, settings, fetcher, metrics)
            loop.add_signal_handler(signal.SIGHUP, reloader.request)
            try:
                if not stopping.is_set():
                    await running.mark_serving(service)
                    logger.info("retina serving %s", ", ".join(sorted(encoders)))
                    await stopping.wait()
                logger.info("stopping; in-flight calls get %.1fs", settings.shutdown_grace_s)
                await running.stop(settings.shutdown_grace_s)
            finally:
                loop.remove_signal_handler(signal.SIGHUP)
                await reloader.close()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


class _Reloader:
    """SIGHUP: load the catalog's encoders again (a new or upgraded model, no restart), serve
    them from the next call on, and close the previous service once its in-flight calls had
    ``shutdown_grace_s`` to finish. A catalog that fails to load is logged and the running
    encoders kept; reloads run one at a time."""

    def __init__(
        self,
        running: RunningServer,
        service: RetinaService,
        settings: RetinaSettings,
        fetcher: ImageFetcher,
        metrics: RetinaMetrics,
    ) -> None:
        self._running, self.service = running, service
        self._settings, self._fetcher, self._metrics = settings, fetcher, metrics
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def request(self) -> None:
        task = asyncio.create_task(self._reload(), name="retina-reload")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload(self) -> None:
        async with self._lock:
            settings = self._settings
            try:
                encoders = await asyncio.to_thread(load_encoders, settings.artifacts_dir, settings)
            except ArtifactError as exc:
                logger.warning("reload failed, keeping the current models: %s", exc.message)
                return
            old = self.service
            self.service = RetinaService(
                encoders, settings, images=self._fetcher, metrics=self._metrics
            )
            await self._running.mark_serving(self.service)
            logger.info("reloaded: serving %s", ", ".join(sorted(encoders)))
        try:
            await asyncio.sleep(settings.shutdown_grace_s)
        finally:
            await old.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.service.close()
