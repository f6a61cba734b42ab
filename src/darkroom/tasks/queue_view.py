"""The queue as a wait estimate needs it, kept in memory: polls and creates cost the same
however long the queue is.

Counting the tasks ahead of one on every request costs time in proportion to the queue (a
poll with 10,000 queued read 10,000 index entries). Instead each API process reads each
model's queue once (the created times of its pending tasks, the workers busy with it, recent
run times), and answers every estimate from that snapshot: the tasks ahead of a task are found
by bisection. A snapshot is used for `refresh_s` (1 s), or for 20 times what it took to read,
whichever is longer, so however deep the queue its reads take at most 5 % of the process.
What this process queues in the meantime is added to its snapshot at once; what other
processes queue, and what workers take, shows at the next read. An estimate is an estimate:
it may be up to that long behind the table.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left, insort
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from darkroom.contract import Quality
from darkroom.tasks.stats import ModelQueue, QueueStats, TaskStats

COST_FACTOR = 20


@dataclass(slots=True)
class _Snapshot:
    queue: ModelQueue
    fresh_until: float

    def stats(self, before: datetime | None) -> QueueStats:
        ahead = {}  # qualities with nothing ahead are left out
        for quality, created in self.queue.pending.items():
            n = len(created) if before is None else bisect_left(created, before.timestamp())
            if n:
                ahead[quality] = n
        return QueueStats(
            ahead=ahead,
            active_workers=self.queue.active_workers,
            recent_durations_s=self.queue.recent_durations_s,
        )


class QueueView:
    def __init__(
        self,
        stats: TaskStats,
        refresh_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stats = stats
        self.refresh_s = refresh_s
        self.monotonic = monotonic
        self._snapshots: dict[str, _Snapshot] = {}
        self._reading: dict[str, asyncio.Lock] = {}

    async def queue_stats(
        self, model: str, quality: Quality, before: datetime | None = None
    ) -> QueueStats:
        """The queue of `model` in front of a task created at `before` (a new task: the whole
        queue), from this process's snapshot; other models' tasks run on other workers and do
        not count."""
        del quality  # a snapshot holds every quality
        return (await self._snapshot(model)).stats(before)

    def note_queued(self, model: str, quality: Quality, created_at: datetime) -> None:
        """A task this process just queued: later estimates count it before the next read."""
        snapshot = self._snapshots.get(model)
        if snapshot is not None:
            insort(snapshot.queue.pending.setdefault(quality, []), created_at.timestamp())

    async def _snapshot(self, model: str) -> _Snapshot:
        snapshot = self._snapshots.get(model)
        if snapshot is not None and self.monotonic() < snapshot.fresh_until:
            return snapshot
        lock = self._reading.setdefault(model, asyncio.Lock())
        async with lock:  # one read per model at a time; its waiters take its result
            snapshot = self._snapshots.get(model)
            if snapshot is not None and self.monotonic() < snapshot.fresh_until:
                return snapshot
            started = self.monotonic()
            queue = await self.stats.model_queue(model)
            now = self.monotonic()
            fresh_s = max(self.refresh_s, COST_FACTOR * (now - started))
            snapshot = self._snapshots[model] = _Snapshot(queue, now + fresh_s)
            return snapshot
