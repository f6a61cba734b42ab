"""Workers the server knows: each worker's row (host, device, model, version, state, current
tasks, images done), written at start and refreshed with its heartbeat.

A row is live while its `last_seen_at` is younger than a lease: a worker that dies without a
word (SIGKILL, a lost machine) falls out of the live set by itself, as its tasks' leases do.
`darkroom workers` lists them, `/metrics` exports them, and the API's maintenance warns about a
model whose tasks wait with no live worker to run them.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, func, insert, select, type_coerce, update

from darkroom import __version__
from darkroom.clock import Clock, SystemClock
from darkroom.contract import Status
from darkroom.db.database import Database
from darkroom.db.schema import UTCDateTime, tasks, workers


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    id: str
    host: str
    device: str
    model: str
    version: str
    state: str
    current_tasks: tuple[str, ...]
    images_done: int
    started_at: datetime
    last_seen_at: datetime

    def live(self, now: datetime, lease_s: float) -> bool:
        return self.state != "stopped" and now - self.last_seen_at < timedelta(seconds=lease_s)


class WorkerRegistry:
    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self.db = db
        self.clock = clock or SystemClock()  # every row's time stamp comes from it

    async def register(self, worker_id: str, *, device: str, model: str) -> None:
        """This worker's row, new or taken over (a restarted process with the same id)."""
        now = self.clock.now()
        values = {
            "host": socket.gethostname(),
            "device": device,
            "model": model,
            "version": __version__,
            "state": "idle",
            "current_tasks": [],
            "images_done": 0,
            "started_at": now,
            "last_seen_at": now,
        }

        def run(conn: Connection) -> None:
            stmt = update(workers).where(workers.c.id == worker_id).values(**values)
            if conn.execute(stmt).rowcount == 0:
                conn.execute(insert(workers).values(id=worker_id, **values))

        await self.db.write(run)

    async def refresh(
        self, worker_id: str, *, current_tasks: Sequence[str], images_done: int
    ) -> None:
        """Seen now, holding these tasks (busy) or none (idle)."""
        stmt = (
            update(workers)
            .where(workers.c.id == worker_id)
            .values(
                state="busy" if current_tasks else "idle",
                current_tasks=list(current_tasks),
                images_done=images_done,
                last_seen_at=self.clock.now(),
            )
        )
        await self.db.write(lambda conn: conn.execute(stmt))

    async def stopped(self, worker_id: str, *, images_done: int) -> None:
        stmt = (
            update(workers)
            .where(workers.c.id == worker_id)
            .values(state="stopped", current_tasks=[], images_done=images_done)
        )
        await self.db.write(lambda conn: conn.execute(stmt))

    async def all(self) -> list[WorkerInfo]:
        query = select(workers).order_by(workers.c.model, workers.c.started_at)
        rows = await self.db.read(lambda conn: conn.execute(query).all())
        return [_info(row) for row in rows]

    async def live(self, lease_s: float) -> list[WorkerInfo]:
        now = self.clock.now()
        return [w for w in await self.all() if w.live(now, lease_s)]

    async def last_seen(self, model: str) -> datetime | None:
        """When a worker of `model` was last seen (a stopped one: when it stopped)."""
        latest = type_coerce(func.max(workers.c.last_seen_at), UTCDateTime)
        query = select(latest).where(workers.c.model == model)
        seen: datetime | None = await self.db.read(lambda conn: conn.execute(query).scalar())
        return seen

    async def models_without_workers(self, lease_s: float) -> dict[str, int]:
        """Models with pending tasks and no live worker: model -> tasks waiting."""
        live = {w.model for w in await self.live(lease_s)}
        query = (
            select(tasks.c.model, func.count())
            .where(tasks.c.status == Status.PENDING.value)
            .group_by(tasks.c.model)
        )
        rows = await self.db.read(lambda conn: conn.execute(query).all())
        return {model: count for model, count in rows if model not in live}

    async def forget_stopped_before(self, cutoff: datetime) -> int:
        """Rows of workers gone (stopped, or not seen) since before `cutoff`."""
        stmt = delete(workers).where(workers.c.last_seen_at < cutoff)
        deleted: int = await self.db.write(lambda conn: conn.execute(stmt).rowcount)
        return deleted


def _info(row: object) -> WorkerInfo:
    m = row._mapping  # type: ignore[attr-defined]
    return WorkerInfo(
        id=m["id"],
        host=m["host"],
        device=m["device"],
        model=m["model"],
        version=m["version"],
        state=m["state"],
        current_tasks=tuple(m["current_tasks"] or ()),
        images_done=m["images_done"],
        started_at=m["started_at"],
        last_seen_at=m["last_seen_at"],
    )
