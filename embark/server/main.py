"""`embark serve`: the gRPC front as its own process, on the configured store and queue.

Start-up order: the port opens at once with health NOT_SERVING (calls answer UNAVAILABLE);
backends are connected with backoff; health turns SERVING when they answer, and follows them
from then on. SIGTERM stops accepting calls and lets in-flight ones finish within the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import grpc

from embark.backends import open_queue, open_similarity_index, open_store, with_backoff
from embark.catalog import Catalog, reload_on_sighup
from embark.encoding import RETINA_CHANNEL_OPTIONS, Encoding, GrpcEncoding
from embark.heads.service import CategorizeService, load_registry
from embark.http import HttpFront, HttpOptions
from embark.metrics import EmbarkMetrics
from embark.queue.base import JobQueue
from embark.server.app import Running, start, wait_for_signal, watch_readiness
from embark.server.workers import MULTIPROC_ENV
from embark.service import EmbarkService, Limits
from embark.settings import EmbarkSettings
from embark.similar.base import SimilarityIndex
from embark.similar.service import SimilarService
from embark.store.base import EmbeddingStore
from embark.store.cached import CachingStore
from embark_core.tls import aio_channel

log = logging.getLogger(__name__)


def limits_from(settings: EmbarkSettings) -> Limits:
    return Limits(
        max_batch=settings.max_batch,
        max_text_chars=settings.max_text_chars,
        max_url_chars=settings.max_url_chars,
        lookup_timeout_s=settings.lookup_timeout_ms / 1000,
        pending_window_s=settings.pending_window_s,
        pending_window_size=settings.pending_window_size,
        max_in_flight=settings.max_in_flight,
    )


async def connect(settings: EmbarkSettings) -> tuple[EmbeddingStore, JobQueue]:
    """Open the store, then the queue, each retried on its own: a queue that is not up yet
    does not cost a reconnect to a store that already answered."""
    store = await with_backoff("store", lambda: open_store(settings.store))
    try:
        queue = await with_backoff("queue", lambda: open_queue(settings.queue))
    except BaseException:
        await store.close()
        raise
    return store, queue


def attach_service(
    running: Running,
    settings: EmbarkSettings,
    *,
    catalog: Catalog,
    store: EmbeddingStore,
    queue: JobQueue,
    encoding: Encoding | None,
    metrics: EmbarkMetrics,
    index: SimilarityIndex | None = None,
    reload_catalog: bool = False,
) -> EmbarkService:
    """Wire EmbArk's read path onto a started server (`embark serve` and `embark dev`): the LRU
    in front of the store, the queue's gauges, the categorizer heads, FindSimilar on ``index``
    (None: off), SIGHUP reloading the heads (and the catalog with ``reload_catalog``); then
    start serving."""
    metrics.watch_buffered(lambda: queue.buffered)
    metrics.watch_delivery_failures(lambda: queue.delivery_failed_total)
    cached = with_cache(store, settings, metrics)
    service = EmbarkService(
        catalog=catalog,
        store=cached,
        queue=queue,
        encoding=encoding,
        limits=limits_from(settings),
        metrics=metrics,
    )
    categorize = CategorizeService(
        service, load_registry(settings.heads_dir, catalog), metrics=metrics
    )
    similar = None if index is None else SimilarService(service, cached, index)
    running.servicer.attach(service, categorize, similar)
    if running.http is not None:
        running.http.attach(service, categorize, similar)

    def on_hangup(new: Catalog | None) -> None:
        if new is not None:
            service.reload_catalog(new)
        # Heads are bound to model revisions: reloaded after the catalog, whatever changed.
        categorize.reload(settings.heads_dir)

    # `kill -HUP`: a new catalog (`embark serve`) and heads directory, without a restart.
    reload_on_sighup(settings.catalog if reload_catalog else None, on_hangup)
    return service


async def start_http(
    running: Running,
    settings: EmbarkSettings,
    *,
    catalog: Catalog,
    metrics: EmbarkMetrics,
    port: int,
    reuse_port: bool = False,
) -> int:
    """Start the HTTP front beside a started gRPC server (`embark serve` and `embark dev`);
    it serves once ``attach_service`` runs. Returns the bound port."""
    token = settings.token.get_secret_value() if settings.token else None
    options = HttpOptions(
        wait_ms=min(settings.http_wait_ms, int(settings.retina_timeout_s * 1000)),
        retry_after_s=settings.http_retry_after_s,
        max_body_bytes=settings.max_message_bytes,
        max_batch=settings.max_batch,
        token=token,
        tls=settings.tls,
        shutdown_grace_s=settings.shutdown_grace_s,
    )
    front = HttpFront(options, catalog=catalog, metrics=metrics)
    running.http_port = await front.start(settings.host, port, reuse_port=reuse_port)
    running.http = front
    return running.http_port


async def serve(settings: EmbarkSettings, *, worker: bool = False) -> None:
    """One EmbArk process. ``worker``: one of several on a shared port (embark/server/
    workers.py): the port is shared (SO_REUSEPORT), metrics go to the multiprocess files and
    the parent serves them."""
    catalog = Catalog.load(settings.catalog)
    # prometheus_client's multiprocess mode is chosen by this variable (set by the parent
    # before the workers start); the worker's HTTP /metrics reads the same files.
    metrics = EmbarkMetrics(multiprocess_dir=os.environ[MULTIPROC_ENV] if worker else None)
    if settings.metrics_port and not worker:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.host, registry=metrics.registry)
    token = settings.token.get_secret_value() if settings.token else None
    running = await start(
        host=settings.host,
        port=settings.port,
        max_message_bytes=settings.max_message_bytes,
        token=token,
        tls=settings.tls,
        metrics=metrics,
        reuse_port=worker,
    )
    log.info(
        "embark listening on %s:%d (models: %s)", settings.host, running.port, ", ".join(catalog)
    )
    if settings.http_port is not None:
        port = await start_http(
            running,
            settings,
            catalog=catalog,
            metrics=metrics,
            port=settings.http_port,
            reuse_port=worker,
        )
        scheme = "https" if settings.tls.enabled else "http"
        log.info("embark http on %s://%s:%d", scheme, settings.host, port)
    channel: grpc.aio.Channel | None = None
    encoding: Encoding | None = None
    if settings.retina_address:
        channel = aio_channel(settings.retina_address, settings.retina_tls, RETINA_CHANNEL_OPTIONS)
        encoding = GrpcEncoding(channel, timeout_s=settings.retina_timeout_s)
    try:
        store, queue = await connect(settings)
    except BaseException:
        # A refused configuration (or Ctrl-C while connecting) stops the open port cleanly, so
        # the CLI's one-line error is all the user sees: no half-closed server at exit.
        await shutdown(running, 0)
        if channel is not None:
            await channel.close(grace=None)
        raise
    index = await open_similarity_index(settings.store, store)
    attach_service(
        running,
        settings,
        catalog=catalog,
        store=store,
        queue=queue,
        encoding=encoding,
        metrics=metrics,
        index=index,
        reload_catalog=True,
    )
    readiness = asyncio.create_task(watch_readiness(running.set_serving, PingBoth(store, queue)))
    refresh = asyncio.create_task(_refresh_metrics(metrics)) if worker else None
    try:
        await wait_for_signal()
    finally:
        await shutdown(running, settings.shutdown_grace_s)
        for task in (readiness, refresh):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await queue.close()
        if index is not None:
            await index.close()
        await store.close()
        if channel is not None:
            await channel.close(grace=None)


async def _refresh_metrics(metrics: EmbarkMetrics, every_s: float = 1.0) -> None:
    """A worker's scrape-time readings, copied into its metric files (EmbarkMetrics.refresh)."""
    while True:
        metrics.refresh()
        await asyncio.sleep(every_s)


def with_cache(
    store: EmbeddingStore, settings: EmbarkSettings, metrics: EmbarkMetrics
) -> EmbeddingStore:
    """The store behind the in-process LRU, unless ``cache_bytes`` is 0."""
    if not settings.cache_bytes:
        return store
    return CachingStore(
        store,
        max_bytes=settings.cache_bytes,
        metrics=metrics,
        # Past this the LRU's hits are answered alone (PartialLookup). It must fire before the
        # service's own lookup timeout, which would drop them with the cold read.
        cold_timeout_s=0.8 * settings.lookup_timeout_ms / 1000,
    )


class PingBoth:
    """Readiness: the store and the queue both answer."""

    def __init__(self, store: EmbeddingStore, queue: JobQueue) -> None:
        self._store, self._queue = store, queue

    async def __call__(self) -> None:
        await self._store.ping()
        await self._queue.ping()


async def shutdown(running: Running, grace_s: float) -> None:
    await running.set_serving(False)
    if running.http is not None:
        await running.http.stop()
    await running.server.stop(grace_s)
