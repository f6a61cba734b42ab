"""The workers table, in memory."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from darkroom import __version__
from darkroom.clock import Clock, SystemClock
from darkroom.contract import Status
from darkroom.tasks.workers import WorkerInfo
from darkroom.testing.tasks import InMemoryTaskStore


class InMemoryWorkerRegistry:
    """`darkroom.tasks.workers.WorkerRegistry`'s methods without a database: rows stamped by
    the clock; `models_without_workers` counts the pending tasks of `tasks`, the in-memory task
    table (none without one)."""

    def __init__(self, clock: Clock | None = None, tasks: InMemoryTaskStore | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.tasks = tasks
        self.rows: dict[str, WorkerInfo] = {}

    async def register(self, worker_id: str, *, device: str, model: str) -> None:
        now = self.clock.now()
        self.rows[worker_id] = WorkerInfo(
            worker_id, socket.gethostname(), device, model, __version__, "idle", (), 0, now, now
        )

    async def refresh(
        self, worker_id: str, *, current_tasks: Sequence[str], images_done: int
    ) -> None:
        row = self.rows.get(worker_id)
        if row is not None:
            self.rows[worker_id] = replace(
                row,
                state="busy" if current_tasks else "idle",
                current_tasks=tuple(current_tasks),
                images_done=images_done,
                last_seen_at=self.clock.now(),
            )

    async def stopped(self, worker_id: str, *, images_done: int) -> None:
        row = self.rows.get(worker_id)
        if row is not None:
            self.rows[worker_id] = replace(
                row, state="stopped", current_tasks=(), images_done=images_done
            )

    async def all(self) -> list[WorkerInfo]:
        return sorted(self.rows.values(), key=lambda w: (w.model, w.started_at))

    async def live(self, lease_s: float) -> list[WorkerInfo]:
        now = self.clock.now()
        return [w for w in await self.all() if w.live(now, lease_s)]

    async def last_seen(self, model: str) -> datetime | None:
        return max((w.last_seen_at for w in self.rows.values() if w.model == model), default=None)

    async def models_without_workers(self, lease_s: float) -> dict[str, int]:
        live = {w.model for w in await self.live(lease_s)}
        waiting: dict[str, int] = {}
        for task in self.tasks.rows.values() if self.tasks is not None else ():
            if task.status is Status.PENDING and task.model not in live:
                waiting[task.model] = waiting.get(task.model, 0) + 1
        return waiting

    async def forget_stopped_before(self, cutoff: datetime) -> int:
        gone = [w.id for w in self.rows.values() if w.last_seen_at < cutoff]
        for worker_id in gone:
            del self.rows[worker_id]
        return len(gone)
