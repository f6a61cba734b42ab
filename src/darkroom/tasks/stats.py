"""Reading the queue's state: what a wait estimate needs, and the counts metrics export."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, String, func, select, type_coerce

from darkroom.contract import Quality, Status
from darkroom.db.database import Database
from darkroom.db.schema import UTCDateTime, as_utc, tasks


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What an estimate of a task's wait needs, all of one model: the tasks that will be taken
    before it per quality (`ahead`), how many wait in all (`queued`), the workers busy with the
    model now, and recent run times per quality (those of the task's own quality, and of any
    other quality waiting ahead)."""

    ahead: dict[Quality, int]
    queued: int
    active_workers: int
    recent_durations_s: dict[Quality, tuple[float, ...]]


@dataclass(frozen=True, slots=True)
class Waiting:
    """One pending task as the queue's snapshot keeps it."""

    created: float  # unix seconds
    account_id: int
    quality: Quality


@dataclass(frozen=True, slots=True)
class ModelQueue:
    """One model's queue as read at one moment: its pending tasks in the order they were
    created, the workers busy with the model, recent run times."""

    pending: list[Waiting]
    active_workers: int
    recent_durations_s: dict[Quality, tuple[float, ...]]


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """The unfinished part of the queue, for metrics: counts by (model, status), when each
    model's oldest pending task was created, and how many workers hold each model's tasks."""

    counts: dict[tuple[str, str], int]
    oldest_pending: dict[str, datetime]
    busy_workers: dict[str, int]


class TaskStats:
    """Grouped reads over the task table (its claim index); each one read transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def queue_depth(self) -> QueueDepth:
        """Pending and processing tasks per model: one grouped read over the claim index."""
        unfinished = tasks.c.status.in_([Status.PENDING.value, Status.PROCESSING.value])
        query = (
            select(
                tasks.c.model,
                tasks.c.status,
                func.count(),
                type_coerce(func.min(tasks.c.created_at), UTCDateTime),
                func.count(func.distinct(tasks.c.worker_id)),
            )
            .where(unfinished)
            .group_by(tasks.c.model, tasks.c.status)
        )
        rows = await self.db.read(lambda conn: conn.execute(query).all())
        counts: dict[tuple[str, str], int] = {}
        oldest: dict[str, datetime] = {}
        busy: dict[str, int] = {}
        for model, status, count, first, workers in rows:
            counts[(model, status)] = count
            if status == Status.PENDING.value:
                oldest[model] = first
            else:
                busy[model] = workers
        return QueueDepth(counts, oldest, busy)

    async def model_queue(self, model: str) -> ModelQueue:
        """`model`'s whole queue in one read (its pending tasks' created times, in order)."""
        # The created times as the driver hands them over (SQLite: text; PostgreSQL: datetimes),
        # parsed here, at half the CPU of SQLAlchemy's own text parsing (docs/performance.md,
        # "Choices in the code").
        pending_q = (
            select(tasks.c.quality, type_coerce(tasks.c.created_at, String), tasks.c.account_id)
            .where(tasks.c.status == Status.PENDING.value, tasks.c.model == model)
            .order_by(tasks.c.created_at)
        )

        def run(conn: Connection) -> ModelQueue:
            pending = [
                Waiting(as_utc(created).timestamp(), account_id, _QUALITIES[quality])
                for quality, created, account_id in conn.execute(pending_q)
            ]
            return ModelQueue(
                pending=pending,
                active_workers=conn.execute(_busy_workers(model)).scalar_one(),
                recent_durations_s={q: _recent_durations(conn, model, q) for q in Quality},
            )

        return await self.db.read(run)


_QUALITIES = {q.value: q for q in Quality}


def _busy_workers(model: str) -> Select[Any]:
    return select(func.count(func.distinct(tasks.c.worker_id))).where(
        tasks.c.status == Status.PROCESSING.value, tasks.c.model == model
    )


def _recent_durations(conn: Connection, model: str, quality: Quality) -> tuple[float, ...]:
    """Seconds the model's last 20 completed tasks of `quality` took to generate."""
    query = (
        select(tasks.c.started_at, tasks.c.finished_at)
        .where(
            tasks.c.status == Status.COMPLETED.value,
            tasks.c.model == model,
            tasks.c.quality == quality.value,
        )
        .order_by(tasks.c.finished_at.desc())
        .limit(20)
    )
    return tuple(
        (r.finished_at - r.started_at).total_seconds()
        for r in conn.execute(query).all()
        if r.started_at and r.finished_at
    )
