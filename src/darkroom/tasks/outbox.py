"""The callback outbox in the database: enqueue with the task's end, claim, record attempts.

Delivery is at least once: a sender that dies after the receiver answered 2xx but before it
recorded the success sends again after its lock runs out; the `webhook-id` header, the same
on every attempt, lets receivers drop the repeat. Every other transition is fenced on the
sender's lock and attempt count, so two senders never both record one attempt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
from darkroom.db.schema import UTCDateTime, accounts, callback_attempts, callbacks, tasks

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


@dataclass(frozen=True, slots=True)
class CallbackRow:
    task_id: str
    account: str
    url: str
    status: str
    attempts: int  # in this round (a retry starts a new one)
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class Attempt:
    attempted_at: datetime
    delivered: bool
    error: str | None


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


def after_attempt(
    attempts_before: int, *, delivered: bool, error: str, now: datetime
) -> dict[str, object]:
    """A callback's changed fields once an attempt is recorded: delivered; given up after the
    last attempt; or unlocked and due again after its retry delay. No `status` means pending."""
    attempts = attempts_before + 1
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
    return values


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
        self,
        sender_id: str,
        *,
        limit: int,
        lock_s: float,
        now: datetime,
        per_account: int | None = None,
        busy: Mapping[int, int] | None = None,
    ) -> list[Delivery]:
        """Lock up to `limit` callbacks whose next attempt is due and that no live sender holds.

        Accounts take turns: each account's due callbacks are ranked by due time, and the claim
        takes every account's first before any account's second. With `per_account`, an account
        gets at most that many less what it already has in flight (`busy`, account id → count),
        so one account's backlog never fills a sender's pool.

        The ranking is a window function, which PostgreSQL will not lock rows under (FOR UPDATE
        SKIP LOCKED); the update re-checks that each row is still due instead, and on
        PostgreSQL a row another sender claimed meanwhile fails that re-check (read committed
        re-evaluates an updated row), so no callback is ever claimed twice.
        """
        due = and_(
            callbacks.c.status == "pending",
            callbacks.c.next_attempt_at <= now,
            or_(callbacks.c.locked_until.is_(None), callbacks.c.locked_until < now),
        )
        turn = func.row_number().over(
            partition_by=callbacks.c.account_id,
            order_by=(callbacks.c.next_attempt_at, callbacks.c.id),
        )
        ranked = (
            select(callbacks.c.id, callbacks.c.account_id, callbacks.c.next_attempt_at)
            .add_columns(turn.label("turn"))
            .where(due)
            .cte("ranked")
        )
        pick = select(ranked.c.id)
        if per_account is not None:
            held = {account: n for account, n in (busy or {}).items() if n > 0}
            in_flight = case(held, value=ranked.c.account_id, else_=0) if held else literal(0)
            pick = pick.where(ranked.c.turn <= per_account - in_flight)
        pick = pick.order_by(ranked.c.turn, ranked.c.next_attempt_at, ranked.c.id).limit(limit)
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
        claimed = [Delivery(r.id, r.task_id, r.account_id, r.url, r.attempts) for r in rows]
        return sorted(claimed, key=lambda d: d.id)

    async def defer(
        self, deliveries: Sequence[Delivery], sender_id: str, *, until: datetime
    ) -> int:
        """Give claimed callbacks back unattempted, due again at `until` (no attempt spent):
        for a sender that claimed more for one receiving host than it lets that host hold."""
        if not deliveries:
            return 0
        stmt = (
            update(callbacks)
            .where(
                callbacks.c.id.in_([d.id for d in deliveries]),
                callbacks.c.locked_by == sender_id,
                callbacks.c.status == "pending",
            )
            .values(locked_by=None, locked_until=None, next_attempt_at=until)
        )
        deferred: int = await self.db.write(lambda conn: conn.execute(stmt).rowcount)
        return deferred

    async def record(
        self, delivery: Delivery, sender_id: str, *, delivered: bool, error: str, now: datetime
    ) -> str | None:
        """Record one attempt; returns the callback's new status, None if the lock was lost."""
        values = after_attempt(delivery.attempts, delivered=delivered, error=error, now=now)
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
        attempt = insert(callback_attempts).values(
            callback_id=delivery.id,
            attempted_at=now,
            delivered=delivered,
            error=None if delivered else error[:2000],
        )

        def write(conn: Connection) -> bool:
            if conn.execute(stmt).rowcount != 1:
                return False  # the lock was lost: another sender records this attempt
            conn.execute(attempt)
            return True

        if not await self.db.write(write):
            return None
        return str(values.get("status", "pending"))

    async def delete_finished_before(self, cutoff: datetime) -> int:
        """Forget delivered and given-up callbacks that ended before `cutoff`, attempts and all."""
        ended = and_(callbacks.c.status != "pending", callbacks.c.finished_at < cutoff)
        their_attempts = delete(callback_attempts).where(
            callback_attempts.c.callback_id.in_(select(callbacks.c.id).where(ended))
        )
        stmt = delete(callbacks).where(ended)

        def write(conn: Connection) -> int:
            conn.execute(their_attempts)
            deleted: int = conn.execute(stmt).rowcount
            return deleted

        return await self.db.write(write)

    async def listing(
        self,
        *,
        status: str | None = None,
        account: str | None = None,
        task_ids: Sequence[str] = (),
        limit: int = 50,
    ) -> list[CallbackRow]:
        """Callbacks newest first, for operators (`darkroom callbacks list`)."""
        query = (
            select(
                callbacks.c.task_id,
                accounts.c.name.label("account"),
                callbacks.c.url,
                callbacks.c.status,
                callbacks.c.attempts,
                callbacks.c.last_error,
                callbacks.c.next_attempt_at,
                callbacks.c.created_at,
                callbacks.c.finished_at,
            )
            .join(accounts, accounts.c.id == callbacks.c.account_id)
            .order_by(callbacks.c.id.desc())
            .limit(limit)
        )
        if status is not None:
            query = query.where(callbacks.c.status == status)
        if account is not None:
            query = query.where(accounts.c.name == account)
        if task_ids:
            query = query.where(callbacks.c.task_id.in_(list(task_ids)))
        rows = await self.db.read(lambda conn: conn.execute(query).all())
        return [CallbackRow(**row._asdict()) for row in rows]

    async def attempts_of(self, task_id: str) -> list[Attempt]:
        """Every recorded attempt of a task's callback, oldest first (a retried callback's
        earlier rounds included)."""
        query = (
            select(
                callback_attempts.c.attempted_at,
                callback_attempts.c.delivered,
                callback_attempts.c.error,
            )
            .join(callbacks, callbacks.c.id == callback_attempts.c.callback_id)
            .where(callbacks.c.task_id == task_id)
            .order_by(callback_attempts.c.id)
        )
        rows = await self.db.read(lambda conn: conn.execute(query).all())
        return [Attempt(**row._asdict()) for row in rows]

    async def retry(self, task_ids: Sequence[str], now: datetime) -> list[str]:
        """Send these tasks' ended callbacks again, as new ones: a full round of attempts from
        now, the same `webhook-id` (a receiver that kept it drops the repeat). Pending ones are
        left as they are. Returns the task ids queued again."""
        ended = and_(callbacks.c.task_id.in_(list(task_ids)), callbacks.c.status != "pending")
        stmt = (
            update(callbacks)
            .where(ended)
            .values(
                status="pending",
                attempts=0,
                next_attempt_at=now,
                locked_by=None,
                locked_until=None,
                finished_at=None,
            )
            .returning(callbacks.c.task_id)
        )
        rows = await self.db.write(lambda conn: conn.execute(stmt).all())
        return sorted(row.task_id for row in rows)

    async def states(self, task_ids: Sequence[str]) -> dict[str, tuple[str, int, str | None]]:
        """(status, attempts, last error) per task id, for operators and tests."""
        query = select(
            callbacks.c.task_id, callbacks.c.status, callbacks.c.attempts, callbacks.c.last_error
        ).where(callbacks.c.task_id.in_(list(task_ids)))
        rows = await self.db.read(lambda conn: conn.execute(query).all())
        return {r.task_id: (r.status, r.attempts, r.last_error) for r in rows}
