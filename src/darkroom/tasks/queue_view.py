"""The queue as a wait estimate needs it, kept in memory: polls and creates cost the same
however long the queue is.

Counting the tasks ahead of one on every request costs time in proportion to the queue (a
poll with 10,000 queued read 10,000 index entries). Instead each API process reads each
model's queue once (its pending tasks: when each was created, by which account, at which
quality; the workers busy with it, recent run times), and answers every estimate from that
snapshot. A snapshot is used for `refresh_s` (1 s), or for 20 times what it took to read,
whichever is longer, so however deep the queue its reads take at most 5 % of the process.
What this process queues in the meantime is added to its snapshot at once; what other
processes queue, and what workers take, shows at the next read. An estimate is an estimate:
it may be up to that long behind the table.

The order counted is the claim's (`TaskStore.claim`): accounts take turns, each in the order it
queued. A task that is its account's k-th waiting has ahead of it its account's k - 1 older
tasks and every other account's first k (or all, if fewer): all the tasks whose turn is at most
k, less itself. The snapshot keeps, per quality, how many waiting tasks have a turn at most t
for every t, so an estimate is one bisection in the account's own list and one lookup.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from darkroom.contract import Quality
from darkroom.tasks.stats import ModelQueue, QueueStats, TaskStats, Waiting

COST_FACTOR = 20


@dataclass(slots=True)
class _Snapshot:
    queue: ModelQueue
    fresh_until: float
    # Per account: its waiting tasks' created times, ascending, and their qualities.
    created: dict[int, list[float]] = field(default_factory=dict)
    qualities: dict[int, list[Quality]] = field(default_factory=dict)
    # Per quality: through_turn[q][t - 1] = waiting tasks of quality q whose turn is at most t.
    through_turn: dict[Quality, list[int]] = field(default_factory=dict)
    queued: int = 0

    @classmethod
    def of(cls, queue: ModelQueue, fresh_until: float) -> _Snapshot:
        snapshot = cls(queue, fresh_until, queued=len(queue.pending))
        at_turn: dict[Quality, list[int]] = {q: [] for q in Quality}
        for task in queue.pending:  # in created order: each account's next is its next turn
            times = snapshot.created.setdefault(task.account_id, [])
            times.append(task.created)
            snapshot.qualities.setdefault(task.account_id, []).append(task.quality)
            counts = at_turn[task.quality]
            counts.extend([0] * (len(times) - len(counts)))
            counts[len(times) - 1] += 1
        turns = max((len(t) for t in snapshot.created.values()), default=0)
        for quality, counts in at_turn.items():
            running, through = 0, []
            for turn in range(turns):
                running += counts[turn] if turn < len(counts) else 0
                through.append(running)
            snapshot.through_turn[quality] = through
        return snapshot

    def stats(self, account_id: int, before: datetime | None) -> QueueStats:
        times = self.created.get(account_id, [])
        # The task's place in its account's line: all of them for a new task.
        place = len(times) if before is None else bisect_left(times, before.timestamp())
        ahead = {}  # qualities with nothing ahead are left out
        for quality, through in self.through_turn.items():
            n = through[min(place + 1, len(through)) - 1] if through else 0
            if place < len(times) and self.qualities[account_id][place] is quality:
                n -= 1  # counted at its own turn: the task itself, or its account's next
            if n:
                ahead[quality] = n
        return QueueStats(
            ahead=ahead,
            queued=self.queued,
            active_workers=self.queue.active_workers,
            recent_durations_s=self.queue.recent_durations_s,
        )

    def add(self, task: Waiting) -> bool:
        """Count a task this process queued; False if it is older than its account's newest
        waiting task (another process's clock), which the counts cannot take in place."""
        times = self.created.setdefault(task.account_id, [])
        if times and task.created < times[-1]:
            return False
        times.append(task.created)
        self.qualities.setdefault(task.account_id, []).append(task.quality)
        turn = len(times)
        for quality, through in self.through_turn.items():
            through.extend([through[-1] if through else 0] * (turn - len(through)))
            if quality is task.quality:
                for t in range(turn - 1, len(through)):
                    through[t] += 1
        self.queued += 1
        return True


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
        self, model: str, account_id: int, before: datetime | None = None
    ) -> QueueStats:
        """The queue of `model` that will be served before a task of `account_id` created at
        `before` (a new task: before one queued now), from this process's snapshot; other
        models' tasks run on other workers and do not count."""
        return (await self._snapshot(model)).stats(account_id, before)

    def note_queued(
        self, model: str, quality: Quality, account_id: int, created_at: datetime
    ) -> None:
        """A task this process just queued: later estimates count it before the next read."""
        snapshot = self._snapshots.get(model)
        if snapshot is not None:
            waiting = Waiting(created_at.timestamp(), account_id, quality)
            if not snapshot.add(waiting):
                snapshot.fresh_until = 0.0  # read again at the next estimate

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
            snapshot = self._snapshots[model] = _Snapshot.of(queue, now + fresh_s)
            return snapshot
