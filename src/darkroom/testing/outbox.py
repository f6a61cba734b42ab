"""The callback outbox and the account reads a sender makes, in memory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from darkroom.accounts.store import new_webhook_secret
from darkroom.clock import Clock, SystemClock
from darkroom.tasks.model import Task
from darkroom.tasks.outbox import Attempt, CallbackRow, Delivery, after_attempt


@dataclass(frozen=True, slots=True)
class _Callback:
    id: int
    task_id: str
    account_id: int
    url: str
    created_at: datetime
    next_attempt_at: datetime
    status: str = "pending"
    attempts: int = 0
    locked_by: str | None = None
    locked_until: datetime | None = None
    last_error: str | None = None
    finished_at: datetime | None = None


@dataclass
class InMemoryOutbox:
    """`darkroom.tasks.outbox.Outbox`'s methods and behaviour without a database: callbacks
    queued by the in-memory task table as its tasks end, claimed by senders under a lock that
    runs out, accounts taking turns, every attempt fenced on the lock and the attempt count.
    tests/tasks/test_outbox_conformance.py holds it and the real outbox on SQLite and
    PostgreSQL to one suite. Account names for `listing` come from `names` (id -> name)."""

    clock: Clock = field(default_factory=SystemClock)
    names: dict[int, str] = field(default_factory=dict)
    rows: dict[int, _Callback] = field(default_factory=dict)
    attempts: dict[int, list[Attempt]] = field(default_factory=dict)

    def enqueue(self, task: Task) -> None:
        """As `darkroom.tasks.outbox.enqueue` in the transaction that ends a task."""
        if task.callback_url is None:
            return
        now = self.clock.now()
        new = _Callback(len(self.rows) + 1, task.id, task.account_id, task.callback_url, now, now)
        self.rows[new.id] = new
        self.attempts[new.id] = []

    def _put(self, row: _Callback, **changes: object) -> None:
        self.rows[row.id] = replace(row, **changes)  # type: ignore[arg-type]

    def _pending(self) -> list[_Callback]:
        return [r for r in self.rows.values() if r.status == "pending"]

    async def next_due(self) -> datetime | None:
        due = [
            r.locked_until
            if r.locked_until is not None and r.locked_until > r.next_attempt_at
            else r.next_attempt_at
            for r in self._pending()
        ]
        return min(due, default=None)

    async def pending_count(self) -> int:
        return len(self._pending())

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
        due = sorted(
            (
                r
                for r in self._pending()
                if r.next_attempt_at <= now and (r.locked_until is None or r.locked_until < now)
            ),
            key=lambda r: (r.next_attempt_at, r.id),
        )
        turns: dict[int, int] = {}
        ranked = []
        for row in due:
            turns[row.account_id] = turns.get(row.account_id, 0) + 1
            ranked.append((turns[row.account_id], row))
        if per_account is not None:
            held = busy or {}
            ranked = [
                (t, r) for t, r in ranked if t <= per_account - max(0, held.get(r.account_id, 0))
            ]
        ranked.sort(key=lambda pair: (pair[0], pair[1].next_attempt_at, pair[1].id))
        claimed = []
        for _, row in ranked[:limit]:
            self._put(row, locked_by=sender_id, locked_until=now + timedelta(seconds=lock_s))
            claimed.append(Delivery(row.id, row.task_id, row.account_id, row.url, row.attempts))
        return sorted(claimed, key=lambda d: d.id)

    async def defer(
        self, deliveries: Sequence[Delivery], sender_id: str, *, until: datetime
    ) -> int:
        deferred = 0
        for delivery in deliveries:
            row = self.rows.get(delivery.id)
            if row is not None and row.locked_by == sender_id and row.status == "pending":
                self._put(row, locked_by=None, locked_until=None, next_attempt_at=until)
                deferred += 1
        return deferred

    async def record(
        self, delivery: Delivery, sender_id: str, *, delivered: bool, error: str, now: datetime
    ) -> str | None:
        row = self.rows.get(delivery.id)
        if (
            row is None
            or row.locked_by != sender_id
            or row.attempts != delivery.attempts
            or row.status != "pending"
        ):
            return None
        changes = after_attempt(delivery.attempts, delivered=delivered, error=error, now=now)
        self._put(row, **changes)
        self.attempts[row.id].append(Attempt(now, delivered, None if delivered else error[:2000]))
        return str(changes.get("status", "pending"))

    async def delete_finished_before(self, cutoff: datetime) -> int:
        ended = [
            r.id
            for r in self.rows.values()
            if r.status != "pending" and r.finished_at is not None and r.finished_at < cutoff
        ]
        for callback_id in ended:
            del self.rows[callback_id]
            del self.attempts[callback_id]
        return len(ended)

    async def listing(
        self,
        *,
        status: str | None = None,
        account: str | None = None,
        task_ids: Sequence[str] = (),
        limit: int = 50,
    ) -> list[CallbackRow]:
        rows = [
            CallbackRow(
                task_id=r.task_id,
                account=self.names.get(r.account_id, str(r.account_id)),
                url=r.url,
                status=r.status,
                attempts=r.attempts,
                last_error=r.last_error,
                next_attempt_at=r.next_attempt_at,
                created_at=r.created_at,
                finished_at=r.finished_at,
            )
            for r in sorted(self.rows.values(), key=lambda r: r.id, reverse=True)
        ]
        return [
            r
            for r in rows
            if (status is None or r.status == status)
            and (account is None or r.account == account)
            and (not task_ids or r.task_id in task_ids)
        ][:limit]

    async def attempts_of(self, task_id: str) -> list[Attempt]:
        return [
            attempt
            for row in sorted(self.rows.values(), key=lambda r: r.id)
            if row.task_id == task_id
            for attempt in self.attempts[row.id]
        ]

    async def retry(self, task_ids: Sequence[str], now: datetime) -> list[str]:
        again = []
        for row in list(self.rows.values()):
            if row.task_id in task_ids and row.status != "pending":
                self._put(
                    row, status="pending", attempts=0, next_attempt_at=now, locked_by=None,
                    locked_until=None, finished_at=None,
                )  # fmt: skip
                again.append(row.task_id)
        return sorted(again)

    async def states(self, task_ids: Sequence[str]) -> dict[str, tuple[str, int, str | None]]:
        return {
            r.task_id: (r.status, r.attempts, r.last_error)
            for r in self.rows.values()
            if r.task_id in task_ids
        }


@dataclass
class InMemoryAccountReads:
    """The two account reads a callback sender makes (`AccountStore.user_group` and
    `webhook_secret`), from dictionaries; a secret is made the first time one is asked for,
    as the real store does for accounts that had none."""

    groups: dict[int, str] = field(default_factory=dict)
    secrets: dict[int, str] = field(default_factory=dict)

    async def user_group(self, account_id: int) -> str:
        return self.groups.get(account_id, "default")

    async def webhook_secret(self, account_id: int) -> str:
        if account_id not in self.secrets:
            self.secrets[account_id] = new_webhook_secret()
        return self.secrets[account_id]
