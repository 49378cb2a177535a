"""Which offset a consumer may commit when its deliveries finish out of order.

KFC finishes most jobs with their batch, but a job whose item fault may pass (an image host's
503) is retried on its own while later batches go on. Kafka commits a position, not a set:
committing offset N marks everything before N done. So the committable position of a partition
is the first offset handed out and not yet done (or one past the last done offset when none is
open): a job in retry holds back the partition's *commit*, never its processing, and a crash
redelivers it and what followed (harmless: writes are idempotent and stored keys are skipped).
Both queue implementations use this one bookkeeping.
"""

from __future__ import annotations

import bisect


class CommitWindow:
    """Per partition: offsets handed out and not yet done, and the committable position."""

    def __init__(self) -> None:
        self._open: dict[int, list[int]] = {}  # ascending
        self._next: dict[int, int] = {}  # one past the highest offset seen done or handed out

    def handed_out(self, partition: int, offset: int) -> None:
        bisect.insort(self._open.setdefault(partition, []), offset)

    def done(self, partition: int, offset: int) -> None:
        """Mark one offset done (a delivery finished, or a message was dead-lettered)."""
        opened = self._open.get(partition, [])
        i = bisect.bisect_left(opened, offset)
        if i < len(opened) and opened[i] == offset:
            del opened[i]
        self._next[partition] = max(self._next.get(partition, 0), offset + 1)

    def forget(self, partition: int, offsets: list[int] | None = None) -> None:
        """Drop ``offsets`` (they will be read again), or the whole partition (revoked)."""
        if offsets is None:
            self._open.pop(partition, None)
            self._next.pop(partition, None)
            return
        for offset in offsets:
            opened = self._open.get(partition, [])
            i = bisect.bisect_left(opened, offset)
            if i < len(opened) and opened[i] == offset:
                del opened[i]

    def position(self, partition: int) -> int | None:
        """The next offset to read for a new consumer: everything before it is done. None when
        nothing of the partition is done yet."""
        done_next = self._next.get(partition)
        if done_next is None:
            return None
        opened = self._open.get(partition)
        return min(opened[0], done_next) if opened else done_next

    def outstanding(self, partition: int) -> int:
        return len(self._open.get(partition, ()))
