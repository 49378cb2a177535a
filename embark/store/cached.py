"""An in-process LRU in front of any ``EmbeddingStore``: the hot tier of the archive.

``CachingStore`` wraps a store (Cassandra in production) and answers repeated keys from memory,
so a hot key costs a dictionary lookup instead of a network round trip. What it caches and why:

- Stored vectors only. A miss or a failure record is never cached: KFC writes the vector moments
  later (or the failure record expires and the key is retried), and a cached absence would hide
  that write. Vectors of a model revision never change (the revision is part of the key), so a
  cached vector is never stale and nothing needs invalidating: a vector written by KFC reaches
  the LRU through the next archive read of its key.
- Bounded in bytes, not entries: a 1280-d image vector costs more than a 384-d text vector.
  Each entry is charged its vector and input bytes plus a fixed estimate of the Python objects
  around them (``ENTRY_OVERHEAD``), so the bound tracks the process's real memory.
- Hits are never thrown away with a failed cold read: when the archive read for the keys not in
  memory fails or takes longer than ``cold_timeout_s``, ``get_many`` raises ``PartialLookup``
  carrying what memory answered, so a batch's hot keys are still HITs while the archive is down.
- Reads of a key already in flight are shared: concurrent requests for the same missing key
  wait on one archive read (a dict of futures) instead of each sending their own, which keeps a
  burst for one new key from becoming a burst of identical Cassandra reads.

A row may outlive its archive TTL in the LRU; that is harmless for the same reason (the vector
is still correct), and the LRU's turnover bounds how long.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Final

from embark.errors import BackendUnavailable
from embark.metrics import EmbarkMetrics
from embark.store.base import (
    EmbeddingStore,
    Lookup,
    PartialLookup,
    StoredVector,
    StoreWrapper,
)

__all__ = ["ENTRY_OVERHEAD", "CachingStore", "entry_cost"]

# Measured with sys.getsizeof on CPython 3.11: the StoredVector (slots), its 32-character key
# string, the small strings it shares with its siblings, and the OrderedDict's node and slot.
ENTRY_OVERHEAD: Final = 400

_Reads = Mapping[str, Lookup]


def entry_cost(row: StoredVector) -> int:
    """What one cached vector is charged against the byte bound."""
    return len(row.vector) + len(row.input) + ENTRY_OVERHEAD


class CachingStore(StoreWrapper):
    """``EmbeddingStore`` that answers from an LRU of at most ``max_bytes`` and delegates the
    rest (and every write) to ``inner``. Not thread-safe: use it from one event loop."""

    def __init__(
        self,
        inner: EmbeddingStore,
        *,
        max_bytes: int,
        metrics: EmbarkMetrics,
        cold_timeout_s: float | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive; do not wrap the store to disable it")
        super().__init__(inner)
        self._cold_timeout_s = cold_timeout_s
        self._max_bytes = max_bytes
        self._metrics = metrics
        self._lru: OrderedDict[str, StoredVector] = OrderedDict()
        self._bytes = 0
        # key -> the future of the archive read that is fetching it right now.
        self._inflight: dict[str, asyncio.Future[_Reads]] = {}
        metrics.watch(metrics.cache_bytes, lambda: self._bytes)
        metrics.watch(metrics.cache_entries, lambda: len(self._lru))

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, key: object) -> bool:
        return key in self._lru

    # -- the Protocol ---------------------------------------------------------------------

    async def get_many(self, keys: Sequence[str]) -> Mapping[str, Lookup]:
        found: dict[str, Lookup] = {}
        missing: list[str] = []
        lru = self._lru
        for key in keys:
            row = lru.get(key)
            if row is not None:
                lru.move_to_end(key)
                found[key] = row
            else:
                missing.append(key)
        if found:
            self._metrics.cache_hits.inc(len(found))
        if not missing:
            return found
        missing = list(dict.fromkeys(missing))
        self._metrics.cache_misses.inc(len(missing))
        mine: list[str] = []
        theirs: list[tuple[str, asyncio.Future[_Reads]]] = []
        for key in missing:
            shared = self._inflight.get(key)
            if shared is None:
                mine.append(key)
            else:
                theirs.append((key, shared))
        try:
            async with asyncio.timeout(self._cold_timeout_s):
                await self._read_cold(mine, theirs, found)
        except (BackendUnavailable, TimeoutError) as exc:
            # What memory answered is still right: hand it back with the failure.
            raise PartialLookup(found, str(exc) or "the archive read timed out") from None
        return found

    async def _read_cold(
        self,
        mine: list[str],
        theirs: list[tuple[str, asyncio.Future[_Reads]]],
        found: dict[str, Lookup],
    ) -> None:
        if mine:
            found.update(await self._read(mine))
        if theirs:
            self._metrics.lookups_coalesced.inc(len(theirs))
            for key, shared in theirs:
                # shield: this caller timing out must not cancel the read others wait on.
                result = await asyncio.shield(shared)
                if (hit := result.get(key)) is not None:
                    found[key] = hit

    async def close(self) -> None:
        self._lru.clear()
        self._bytes = 0
        await self._inner.close()

    # -- internals ------------------------------------------------------------------------

    async def _read(self, keys: list[str]) -> _Reads:
        """Read ``keys`` from the archive on behalf of everyone who asks for them meanwhile."""
        shared: asyncio.Future[_Reads] = asyncio.get_running_loop().create_future()
        for key in keys:
            self._inflight[key] = shared
        try:
            result = await self._inner.get_many(keys)
        except asyncio.CancelledError:
            # The reader gave up (its lookup deadline); waiters get an answer, not a hang.
            _fail(shared, BackendUnavailable("the shared archive read was cancelled"))
            raise
        except BaseException as exc:
            _fail(shared, exc)
            raise
        else:
            shared.set_result(result)
        finally:
            for key in keys:
                if self._inflight.get(key) is shared:
                    del self._inflight[key]
        for row in result.values():
            if isinstance(row, StoredVector):
                self._remember(row)
        return result

    def _remember(self, row: StoredVector) -> None:
        cost = entry_cost(row)
        if cost > self._max_bytes:
            return  # would evict everything else and still not fit
        old = self._lru.pop(row.key, None)
        if old is not None:
            self._bytes -= entry_cost(old)
        self._lru[row.key] = row
        self._bytes += cost
        evicted = 0
        while self._bytes > self._max_bytes:
            _, victim = self._lru.popitem(last=False)
            self._bytes -= entry_cost(victim)
            evicted += 1
        if evicted:
            self._metrics.cache_evictions.inc(evicted)


def _fail(shared: asyncio.Future[_Reads], exc: BaseException) -> None:
    shared.set_exception(exc)
    # Retrieve it once here: with no waiter, asyncio would log "exception never retrieved".
    shared.exception()
