"""The callback outbox in the database: enqueue with the task's end, claim, record attempts.

Delivery is at least once: a sender that dies after the receiver answered 2xx but before it
recorded the success sends again after its lock runs out; the `webhook-id` header, the same
on every attempt, lets receivers drop the repeat. Every other transition is fenced on the
sender's lock and attempt count, so two senders never both record one attempt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    Connection,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    type_coerce,
    update,
)

from darkroom.db.database import Database
from darkroom.db.schema import UTCDateTime, callbacks, tasks

# Seconds to wait before retry 1, 2 and 3 (the contract: at most 3 retries, after 1, 2, 4 s).
RETRY_DELAYS_S: tuple[float, ...] = (1.0, 2.0, 4.0)
MAX_ATTEMPTS = len(RETRY_DELAYS_S) + 1


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    task_id: str
    account_id: int
    url: str
    attempts: int  # made before this one

    @property
    def webhook_id(self) -> str:
        """Stable across retries, so a receiver can tell a repeat from a new event."""
        return f"msg_{self.task_id}"


def enqueue(conn: Connection, task_id: str, now: datetime) -> None:
    """In the transaction that ends the task: a pending callback if the task asked for one."""
    source = select(
        tasks.c.id,
        tasks.c.account_id,
        tasks.c.callback_url,
        literal("pending"),
        literal(0),
        literal(now, callbacks.c.next_attempt_at.type),
        literal(now, callbacks.c.created_at.type),
    ).where(tasks.c.id == task_id, tasks.c.callback_url.is_not(None))
    conn.execute(
        insert(callbacks).from_select(
            ["task_id", "account_id", "url", "status", "attempts", "next_attempt_at", "created_at"],
            source,
        )
    )


class Outbox:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def next_due(self) -> datetime | None:
        """When the earliest pending callback can be claimed (a read: no write lock taken).

        A callback a sender holds is due when its lock runs out, not at its past attempt time,
        or every sender would spin on it while the attempt is in flight.
        """
        held = and_(
            callbacks.c.locked_until.is_not(None),
            callbacks.c.locked_until > callbacks.c.next_attempt_at,
        )
        # Typed as the columns are, so the result comes back as an aware UTC datetime.
        claimable_at = type_coerce(
            case((held, callbacks.c.locked_until), else_=callbacks.c.next_attempt_at),
            UTCDateTime,
        )
        query = select(func.min(claimable_at)).where(callbacks.c.status == "pending")
        due: datetime | None = await self.db.read(lambda conn: conn.execute(query).scalar_one())
        return due

    async def pending_count(self) -> int:
        """Callbacks not yet delivered or given up: queued, in flight, or waiting for a retry."""
        query = select(func.count()).where(callbacks.c.status == "pending")
        count: int = await self.db.read(lambda conn: conn.execute(query).scalar_one())
        return count

    async def claim_due(
        self, sender_id: str, *, limit: int, lock_s: float, now: datetime
    ) -> list[Delivery]:
        """Lock up to `limit` callbacks whose next attempt is due and that no live sender holds."""
        due = and_(
            callbacks.c.status == "pending",
            callbacks.c.next_attempt_at <= now,
            or_(callbacks.c.locked_until.is_(None), callbacks.c.locked_until < now),
        )
        pick = select(callbacks.c.id).where(due).order_by(callbacks.c.next_attempt_at).limit(limit)
        if self.db.dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        picked = pick.cte("picked")  # a CTE, as in TaskStore.claim: evaluated once
        stmt = (
            update(callbacks)
            .where(callbacks.c.id.in_(select(picked.c.id)), due)
            .values(locked_by=sender_id, locked_until=now + timedelta(seconds=lock_s))
            .returning(
                callbacks.c.id,
                callbacks.c.task_id,
                callbacks.c.account_id,
                callbacks.c.url,
                callbacks.c.attempts,
            )
        )
        rows = await self.db.write(lambda conn: conn.execute(stmt).all())
        return [Delivery(r.id, r.task_id, r.account_id, r.url, r.attempts) for r in rows]

    async def record(
        self, delivery: Delivery, sender_id: str, *, delivered: bool, error: str, now: datetime
    ) -> str | None:
        """Record one attempt; returns the callback's new status, None if the lock was lost."""
        attempts = delivery.attempts + 1
        values: dict[str, object] = {
            "attempts": attempts,
            "locked_by": None,
            "locked_until": None,
            "last_error": None if delivered else error[:2000],
        }
        if delivered:
            values.update(status="delivered", finished_at=now)
        elif attempts >= MAX_ATTEMPTS:
            values.update(status="failed", finished_at=now)
        else:
            values.update(next_attempt_at=now + timedelta(seconds=RETRY_DELAYS_S[attempts - 1]))
        stmt = (
            update(callbacks)
            .where(
                callbacks.c.id == delivery.id,
                callbacks.c.locked_by == sender_id,
                callbacks.c.attempts == delivery.attempts,
                callbacks.c.status == "pending",
            )
            .values(**values)
        )
        if await self.db.write(lambda conn: conn.execute(stmt).rowcount) != 1:
            return None
        return str(values.get("status", "pending"))

    async def delete_finished_before(self, cutoff: datetime) -> int:
        """Forget delivered and given-up callbacks that ended before `cutoff`."""
        stmt = delete(callbacks).where(
            callbacks.c.status != "pending", callbacks.c.finished_at < cutoff
        )
        deleted: int = await self.db.write(lambda conn: conn.execute(stmt).rowcount)
        return deleted

    async def states(self, task_ids: Sequence[str]) -> dict[str, tuple[str, int, str | None]]:
        """(status, attempts, last error) per task id, for operators and tests."""
        query = select(
            callbacks.c.task_id, callbacks.c.status, callbacks.c.attempts, callbacks.c.last_error
        ).where(callbacks.c.task_id.in_(list(task_ids)))
        rows = await self.db.read(lambda conn: conn.execute(query).all())
        return {r.task_id: (r.status, r.attempts, r.last_error) for r in rows}
