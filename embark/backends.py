"""Opening the configured store and queue. The only place that knows every backend; the rest of
EmbArk and KFC see the EmbeddingStore / JobQueue / JobConsumer protocols."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from embark.errors import PreconditionFailed
from embark.queue.base import JobConsumer, JobQueue
from embark.queue.kafka import KafkaJobConsumer, KafkaJobQueue, ensure_topics
from embark.queue.local import LocalBroker, LocalJobConsumer, LocalJobQueue
from embark.retry import Backoff
from embark.settings import QueueSettings, StoreSettings
from embark.similar.base import SimilarityIndex
from embark.similar.cassandra import CassandraSimilarityIndex
from embark.similar.indexing import IndexingStore
from embark.similar.sqlite import open_sqlite_index
from embark.store.base import EmbeddingStore
from embark.store.cassandra import open_cassandra_store
from embark.store.half import HalfPrecisionWrites
from embark.store.sqlite import open_sqlite_store

T = TypeVar("T")

log = logging.getLogger(__name__)


# Services start before their backends do, and wait for them instead of crash-looping.
_CONNECT = Backoff(initial_s=0.5, max_s=10.0)


async def with_backoff(what: str, connect: Callable[[], Awaitable[T]]) -> T:
    """Retry ``connect`` while it fails retriably (the one policy, ``embark.retry``)."""
    async for attempt in _CONNECT.retrying(what=f"{what} not reachable yet"):
        with attempt:
            return await connect()
    raise AssertionError("unreachable: the retrying loop returns or raises")


async def open_store(settings: StoreSettings) -> EmbeddingStore:
    """Connect to the archive; raises BackendUnavailable when it does not answer. With
    similarity search on Cassandra, every write also feeds the vector tables (KFC's and
    read-through's alike: both open the store here)."""
    if settings.backend == "cassandra":
        cassandra = await open_cassandra_store(settings.cassandra)
        store = _half(cassandra, settings)
        if settings.similarity_search:
            # The index gets float32 (its vector<float, n> column); the archive row the dtype.
            return IndexingStore(store, CassandraSimilarityIndex(cassandra))
        return store
    return _half(await open_sqlite_store(settings.sqlite), settings)


def _half(store: EmbeddingStore, settings: StoreSettings) -> EmbeddingStore:
    return HalfPrecisionWrites(store) if settings.vector_dtype == "float16" else store


async def open_similarity_index(
    settings: StoreSettings, store: EmbeddingStore
) -> SimilarityIndex | None:
    """The index FindSimilar searches, for a store ``open_store`` opened; None when off."""
    if isinstance(store, IndexingStore):
        return store.index
    if settings.backend == "sqlite":
        return await open_sqlite_index(settings.sqlite.path)
    return None


async def open_queue(settings: QueueSettings, broker: LocalBroker | None = None) -> JobQueue:
    """The producer side. The local queue only exists inside one process (`embark dev`), so it
    needs the broker that process shares with its consumer."""
    if settings.backend == "kafka":
        await ensure_topics(settings.kafka)
        return KafkaJobQueue(settings.kafka)
    return LocalJobQueue(_require(broker))


async def open_consumer(settings: QueueSettings, broker: LocalBroker | None = None) -> JobConsumer:
    if settings.backend == "kafka":
        await ensure_topics(settings.kafka)
        return KafkaJobConsumer(settings.kafka)
    return LocalJobConsumer(_require(broker))


def _require(broker: LocalBroker | None) -> LocalBroker:
    if broker is None:
        raise PreconditionFailed(
            "the local queue lives inside one process: use `embark dev`, or set "
            "EMBARK_QUEUE__BACKEND=kafka (KFC_QUEUE__BACKEND=kafka) for separate processes"
        )
    return broker
