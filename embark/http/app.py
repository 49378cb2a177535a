"""``HttpFront``: the aiohttp application in EmbArk's process and event loop, beside grpc.aio.

It starts before the backends answer (``/health`` live, ``/ready`` 503, calls 503) and serves
once ``attach`` gives it the same ``EmbarkService`` the gRPC servicer uses. The middlewares
apply what gRPC's guard (``embark_core.interceptors``) applies: the bearer token
(``EMBARK_TOKEN``, every route but ``/health``, ``/ready`` and ``/metrics``), one error mapping
(errors.py), and per-route latency and status counts (``embark_request_seconds``/
``embark_responses`` with ``api="http"``). TLS comes from the same ``EMBARK_TLS__*`` settings
as the gRPC port.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from embark.catalog import Catalog
from embark.errors import EmbarkError
from embark.heads.service import CategorizeService
from embark.http.errors import HttpError, from_embark, internal
from embark.http.routes import Routes
from embark.metrics import EmbarkMetrics
from embark.service import EmbarkService
from embark.similar.service import SimilarService
from embark_core.interceptors import BearerToken
from embark_core.tls import ServerTls, server_ssl_context

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})


@dataclass(frozen=True)
class HttpOptions:
    """What the HTTP front needs from EmbarkSettings (see the reasons there)."""

    wait_ms: int
    retry_after_s: float
    max_body_bytes: int
    max_batch: int
    token: str | None = None
    tls: ServerTls | None = None
    # In-flight requests get this long to finish at stop (EMBARK_SHUTDOWN_GRACE_S).
    shutdown_grace_s: float = 10.0


class HttpFront:
    def __init__(self, options: HttpOptions, *, catalog: Catalog, metrics: EmbarkMetrics) -> None:
        self._options = options
        self._metrics = metrics
        self._routes = Routes(
            catalog=catalog,
            metrics=metrics,
            wait_ms=options.wait_ms,
            retry_after_s=options.retry_after_s,
            max_batch=options.max_batch,
        )
        self._token = BearerToken(options.token) if options.token else None
        self.app = web.Application(
            middlewares=[self._observe, self._authorize],
            client_max_size=options.max_body_bytes,
        )
        self._routes.add_to(self.app)
        self._runner: web.AppRunner | None = None

    def attach(
        self,
        service: EmbarkService,
        categorizer: CategorizeService,
        similar: SimilarService | None = None,
    ) -> None:
        self._routes.attach(service, categorizer, similar)

    def set_ready(self, ready: bool) -> None:
        self._routes.ready = ready

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listen on ``host:port`` (0: any free port); returns the bound port. ``reuse_port``:
        share the port with the other `embark serve` workers (SO_REUSEPORT)."""
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self._options.shutdown_grace_s,
        )
        await runner.setup()
        tls = self._options.tls
        context = server_ssl_context(tls) if tls is not None and tls.enabled else None
        site = web.TCPSite(runner, host, port, ssl_context=context, reuse_port=reuse_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound: int = runner.addresses[0][1]
        return bound

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Errors to OpenAI-shaped bodies (never exception text), and the route's metrics."""
        started = time.perf_counter()
        try:
            response = await handler(request)
        except HttpError as exc:
            response = exc.response()
        except EmbarkError as exc:
            response = from_embark(exc, retry_after_s=self._options.retry_after_s).response()
        except web.HTTPRequestEntityTooLarge:
            limit = self._options.max_body_bytes
            message = f"the request body is larger than {limit} bytes; split the batch"
            response = HttpError(413, message, code="request_too_large").response()
        except web.HTTPException as exc:  # aiohttp's own: 404, 405
            response = HttpError(exc.status, exc.reason, code=_slug(exc.reason)).response()
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.path)
            response = internal().response()
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        self._metrics.observe_request("http", route, str(response.status), started)
        return response

    @web.middleware
    async def _authorize(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._token is None or request.path in _OPEN_PATHS:
            return await handler(request)
        if not self._token.matches(request.headers.get("Authorization", "")):
            raise HttpError(
                401,
                "missing or invalid token (Authorization: Bearer <token>)",
                type_="authentication_error",
                code="invalid_api_key",
            )
        return await handler(request)


def _slug(reason: str) -> str:
    return reason.lower().replace(" ", "_")
