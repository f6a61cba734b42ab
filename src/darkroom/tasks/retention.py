"""Forgetting what outlived its lifetime: result files' rows, finished tasks, idempotency keys.

Run by the API processes' maintenance; each step claims its rows with one statement, so any
number of replicas may run it at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update

from darkroom.clock import Clock, SystemClock
from darkroom.contract import Status
from darkroom.db.database import Database
from darkroom.db.schema import idempotency_keys, tasks


@dataclass(frozen=True, slots=True)
class ExpiredResults:
    """A finished task past its results' lifetime: the files it may have left."""

    task_id: str
    attempt: int
    result_keys: tuple[str, ...]


class TaskRetention:
    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self.db = db
        self.clock = clock or SystemClock()  # every row's time stamp comes from it

    async def expired_results(self, *, ttl_s: float, limit: int = 500) -> list[ExpiredResults]:
        """Finished tasks (completed or failed) past `ttl_s` whose files are not yet removed,
        oldest first. Failed ones too: a worker killed between publishing and completing left a
        file that nothing links to."""
        cutoff = self.clock.now() - timedelta(seconds=ttl_s)
        query = (
            select(tasks.c.id, tasks.c.attempt, tasks.c.result_keys)
            .where(
                tasks.c.status.in_([Status.COMPLETED.value, Status.FAILED.value]),
                tasks.c.finished_at < cutoff,
                tasks.c.results_deleted.is_(False),
            )
            .order_by(tasks.c.finished_at)
            .limit(limit)
        )
        rows = await self.db.read(lambda conn: conn.execute(query).all())
        return [ExpiredResults(r.id, r.attempt, tuple(r.result_keys or ())) for r in rows]

    async def mark_results_deleted(self, task_id: str) -> None:
        """Record that a task's files are gone (after they were deleted, never before)."""
        stmt = update(tasks).where(tasks.c.id == task_id).values(results_deleted=True)
        await self.db.write(lambda conn: conn.execute(stmt))

    async def delete_finished_before(self, *, retention_s: float) -> int:
        """Forget finished tasks past retention whose files are gone."""
        cutoff = self.clock.now() - timedelta(seconds=retention_s)
        stmt = delete(tasks).where(tasks.c.finished_at < cutoff, tasks.c.results_deleted.is_(True))
        deleted: int = await self.db.write(lambda conn: conn.execute(stmt).rowcount)
        return deleted

    async def forget_idempotency_keys_before(self, *, age_s: float) -> int:
        cutoff = self.clock.now() - timedelta(seconds=age_s)
        stmt = delete(idempotency_keys).where(idempotency_keys.c.created_at < cutoff)
        deleted: int = await self.db.write(lambda conn: conn.execute(stmt).rowcount)
        return deleted
