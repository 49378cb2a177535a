"""Running the EmbArk gRPC server: the guard (errors, metrics, token), health (readiness),
reflection, metrics and graceful shutdown. ``serve`` is `embark serve`; ``start`` is reused by
`embark dev` and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from embark.http import HttpFront
from embark.metrics import EmbarkMetrics
from embark.server.servicer import EmbarkServicer
from embark_api.v1 import embark_pb2, embark_pb2_grpc
from embark_core.interceptors import BearerToken, Guard
from embark_core.tls import ServerTls, add_port

log = logging.getLogger(__name__)

SERVICE_NAME: str = embark_pb2.DESCRIPTOR.services_by_name["EmbArk"].full_name


@dataclass
class Running:
    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    servicer: EmbarkServicer
    # The HTTP front in the same process, when one is started (EMBARK_HTTP_PORT).
    http: HttpFront | None = None
    http_port: int | None = None

    async def set_serving(self, serving: bool) -> None:
        if self.http is not None:
            self.http.set_ready(serving)
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)


async def start(
    *,
    host: str,
    port: int,
    max_message_bytes: int,
    token: str | None = None,
    extra: Callable[[grpc.aio.Server], list[str]] | None = None,
    tls: ServerTls | None = None,
    metrics: EmbarkMetrics | None = None,
    reuse_port: bool = False,
) -> Running:
    """Start the server with health NOT_SERVING and a servicer that answers UNAVAILABLE until a
    service is attached. ``extra`` registers more services and returns their full names, for
    reflection (`embark dev` adds Retina)."""
    observe = None
    if metrics is not None:

        def observe(method: str, code: str, started: float) -> None:
            metrics.observe_request("grpc", method, code, started)

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Several `embark serve` workers listen on one port (embark/server/workers.py);
            # off otherwise, so a second server on a taken port fails instead of sharing it.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
    )
    # Every service, `embark dev`'s Retina too, is registered through the guard: errors,
    # metrics and the token wrap each method once, not an interceptor chain per call.
    guard = Guard(server, observe=observe, token=BearerToken(token) if token else None)
    servicer = EmbarkServicer()
    embark_pb2_grpc.add_EmbArkServicer_to_server(servicer, guard.target)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, guard.target)
    names = [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME]
    if extra is not None:
        names.extend(extra(guard.target))
    reflection.enable_server_reflection(sorted(set(names)), server)
    bound = add_port(server, f"{host}:{port}", tls)
    await server.start()
    running = Running(server, bound, health_servicer, servicer)
    await running.set_serving(False)
    return running


async def watch_readiness(
    set_serving: Callable[[bool], Awaitable[None]],
    ping: Callable[[], Awaitable[None]],
    every_s: float = 2.0,
) -> None:
    """Keep health in step with the backends: SERVING only while ``ping`` succeeds. Health is
    set only when readiness changes, and the first failure of a run is logged once."""
    serving: bool | None = None
    while True:
        try:
            await asyncio.wait_for(ping(), timeout=every_s)
            ok = True
        except Exception as exc:  # noqa: BLE001 (any failure means not ready)
            ok = False
            if serving is not False:
                log.warning("backends not ready: %s", exc)
        if ok != serving:
            await set_serving(ok)
            serving = ok
        await asyncio.sleep(every_s)


async def wait_for_signal() -> None:
    """Return on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
