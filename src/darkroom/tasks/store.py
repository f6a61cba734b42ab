"""The task table as a queue: create, read, claim with a lease, heartbeat, finish behind a fence.

Every state change is one conditional UPDATE, so concurrent API processes, workers and rescuers
never need more than the database's own row locking. Finishing requires the attempt number the
worker claimed (the fence): a worker whose lease was taken over cannot finish the task again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, and_, delete, func, insert, select, update

from darkroom.contract import FailureCode, Quality, Status
from darkroom.db.database import Database
from darkroom.db.schema import tasks
from darkroom.tasks.model import Claim, NewTask, Task

LOST_WORKER_MESSAGE = "The worker running this task stopped responding"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Rescued:
    requeued: tuple[str, ...]
    failed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What an estimate of a task's wait needs."""

    ahead: int
    active_workers: int
    recent_durations_s: tuple[float, ...]


class TaskStore:
    """All task-table reads and writes. Methods open their own transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, new: NewTask) -> Task:
        values = {
            "id": new.id,
            "account_id": new.account_id,
            "api_key_id": new.api_key_id,
            "model": new.model,
            "prompt": new.prompt,
            "size": new.size,
            "quality": new.quality.value,
            "width": new.width,
            "height": new.height,
            "seed": new.seed,
            "nsfw_check": new.nsfw_check,
            "callback_url": new.callback_url,
            "batch_key": new.batch_key,
            "status": Status.PENDING.value,
            "progress": 0,
            "attempt": 0,
            "credits_reserved": new.credits_reserved,
            "estimated_time": new.estimated_time,
            "created_at": new.created_at,
        }
        stmt = insert(tasks).values(**values).returning(*tasks.c)
        async with self.db.transaction() as conn:
            return Task.from_row((await conn.execute(stmt)).one())

    async def get(self, task_id: str) -> Task | None:
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(tasks).where(tasks.c.id == task_id))).first()
        return Task.from_row(row) if row else None

    async def unfinished_for_key(self, api_key_id: int) -> int:
        """Tasks of this key still pending or processing."""
        async with self.db.engine.connect() as conn:
            count: int = (
                await conn.execute(
                    select(func.count()).where(
                        tasks.c.api_key_id == api_key_id,
                        tasks.c.status.in_([Status.PENDING.value, Status.PROCESSING.value]),
                    )
                )
            ).scalar_one()
        return count

    async def claim(
        self, worker_id: str, *, limit: int, lease_s: float, models: Sequence[str]
    ) -> list[Task]:
        """Take up to `limit` of the oldest pending tasks that can share one batch."""
        now = utcnow()
        pending = tasks.c.status == Status.PENDING.value
        oldest_key = (
            select(tasks.c.batch_key)
            .where(pending, tasks.c.model.in_(models))
            .order_by(tasks.c.created_at, tasks.c.id)
            .limit(1)
            .scalar_subquery()
        )
        pick = (
            select(tasks.c.id)
            .where(pending, tasks.c.batch_key == oldest_key)
            .order_by(tasks.c.created_at, tasks.c.id)
            .limit(limit)
        )
        if self.db.dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        # SQLite needs no row lock: BEGIN IMMEDIATE already serialises writers (see Database).
        # A CTE, not `IN (subquery)`: PostgreSQL may re-run a plain subquery per row, and with
        # SKIP LOCKED each re-run skips the rows this statement just took and picks more.
        picked = pick.cte("picked")
        stmt = (
            update(tasks)
            .where(tasks.c.id.in_(select(picked.c.id)), pending)
            .values(
                status=Status.PROCESSING.value,
                attempt=tasks.c.attempt + 1,
                worker_id=worker_id,
                lease_expires_at=now + timedelta(seconds=lease_s),
                started_at=func.coalesce(tasks.c.started_at, now),
                progress=0,
            )
            .returning(*tasks.c)
        )
        async with self.db.transaction() as conn:
            rows = (await conn.execute(stmt)).all()
        claimed = [Task.from_row(r) for r in rows]
        claimed.sort(key=lambda t: (t.created_at, t.id))
        return claimed

    def _fenced(self, claim: Claim) -> ColumnElement[bool]:
        """The row is still this claim's: same attempt, still processing."""
        return and_(
            tasks.c.id == claim.task_id,
            tasks.c.attempt == claim.attempt,
            tasks.c.status == Status.PROCESSING.value,
        )

    async def heartbeat(self, claims: Sequence[Claim], *, lease_s: float) -> set[str]:
        """Extend the leases of `claims`; returns the ids whose lease this worker has lost."""
        lost: set[str] = set()
        expires = utcnow() + timedelta(seconds=lease_s)
        async with self.db.transaction() as conn:
            for claim in claims:
                result = await conn.execute(
                    update(tasks).where(self._fenced(claim)).values(lease_expires_at=expires)
                )
                if result.rowcount == 0:
                    lost.add(claim.task_id)
        return lost

    async def set_progress(self, progress: dict[Claim, int]) -> None:
        async with self.db.transaction() as conn:
            for claim, value in progress.items():
                await conn.execute(
                    update(tasks)
                    .where(self._fenced(claim), tasks.c.progress < value)
                    .values(progress=max(0, min(99, value)))
                )

    async def complete(self, claim: Claim, result_keys: Sequence[str]) -> bool:
        """Mark the task completed; False if this claim no longer holds it."""
        async with self.db.transaction() as conn:
            result = await conn.execute(
                update(tasks)
                .where(self._fenced(claim))
                .values(
                    status=Status.COMPLETED.value,
                    progress=100,
                    result_keys=list(result_keys),
                    lease_expires_at=None,
                    finished_at=utcnow(),
                )
            )
        return result.rowcount == 1

    async def fail(self, claim: Claim, code: FailureCode, message: str) -> bool:
        """Mark the task failed with a business code; False if this claim no longer holds it."""
        async with self.db.transaction() as conn:
            result = await conn.execute(
                update(tasks)
                .where(self._fenced(claim))
                .values(
                    status=Status.FAILED.value,
                    error_code=code.value,
                    error_message=message,
                    lease_expires_at=None,
                    finished_at=utcnow(),
                )
            )
        return result.rowcount == 1

    async def release(self, claim: Claim) -> bool:
        """Give a claimed task back to the queue untouched (a worker shutting down)."""
        async with self.db.transaction() as conn:
            result = await conn.execute(
                update(tasks)
                .where(self._fenced(claim))
                .values(
                    status=Status.PENDING.value,
                    attempt=tasks.c.attempt - 1,
                    worker_id=None,
                    lease_expires_at=None,
                    progress=0,
                )
            )
        return result.rowcount == 1

    async def rescue_expired(self, *, max_attempts: int) -> Rescued:
        """Return tasks whose lease ran out to the queue, or fail them at the attempt limit."""
        now = utcnow()
        expired = and_(tasks.c.status == Status.PROCESSING.value, tasks.c.lease_expires_at < now)
        async with self.db.transaction() as conn:
            requeued = await conn.execute(
                update(tasks)
                .where(expired, tasks.c.attempt < max_attempts)
                .values(
                    status=Status.PENDING.value,
                    worker_id=None,
                    lease_expires_at=None,
                    progress=0,
                )
                .returning(tasks.c.id)
            )
            requeued_ids = tuple(requeued.scalars())
            failed = await conn.execute(
                update(tasks)
                .where(expired, tasks.c.attempt >= max_attempts)
                .values(
                    status=Status.FAILED.value,
                    error_code=FailureCode.SERVICE_ERROR.value,
                    error_message=LOST_WORKER_MESSAGE,
                    lease_expires_at=None,
                    finished_at=now,
                )
                .returning(tasks.c.id)
            )
            failed_ids = tuple(failed.scalars())
        return Rescued(requeued_ids, failed_ids)

    async def take_expired_results(self, *, ttl_s: float) -> list[tuple[str, tuple[str, ...]]]:
        """Mark results older than `ttl_s` deleted; returns (task id, keys) to remove from storage."""
        cutoff = utcnow() - timedelta(seconds=ttl_s)
        async with self.db.transaction() as conn:
            rows = await conn.execute(
                update(tasks)
                .where(
                    tasks.c.status == Status.COMPLETED.value,
                    tasks.c.finished_at < cutoff,
                    tasks.c.results_deleted.is_(False),
                )
                .values(results_deleted=True)
                .returning(tasks.c.id, tasks.c.result_keys)
            )
            return [(r.id, tuple(r.result_keys or ())) for r in rows]

    async def delete_finished_before(self, *, retention_s: float) -> int:
        """Forget finished tasks past retention (their results are long gone)."""
        cutoff = utcnow() - timedelta(seconds=retention_s)
        async with self.db.transaction() as conn:
            result = await conn.execute(
                delete(tasks).where(
                    tasks.c.finished_at < cutoff,
                    (tasks.c.status == Status.FAILED.value) | tasks.c.results_deleted.is_(True),
                )
            )
        return result.rowcount

    async def queue_stats(
        self, model: str, quality: Quality, before: datetime | None = None
    ) -> QueueStats:
        """Tasks waiting ahead, workers busy now, and recent run times for this model and quality."""
        async with self.db.engine.connect() as conn:
            ahead_q = select(func.count()).where(tasks.c.status == Status.PENDING.value)
            if before is not None:
                ahead_q = ahead_q.where(tasks.c.created_at < before)
            ahead = (await conn.execute(ahead_q)).scalar_one()
            workers = (
                await conn.execute(
                    select(func.count(func.distinct(tasks.c.worker_id))).where(
                        tasks.c.status == Status.PROCESSING.value
                    )
                )
            ).scalar_one()
            recent = (
                await conn.execute(
                    select(tasks.c.started_at, tasks.c.finished_at)
                    .where(
                        tasks.c.status == Status.COMPLETED.value,
                        tasks.c.model == model,
                        tasks.c.quality == quality.value,
                    )
                    .order_by(tasks.c.finished_at.desc())
                    .limit(20)
                )
            ).all()
        durations = tuple(
            (r.finished_at - r.started_at).total_seconds() for r in recent if r.started_at
        )
        return QueueStats(ahead=ahead, active_workers=workers, recent_durations_s=durations)
