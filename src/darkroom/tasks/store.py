"""The task table as a queue: create, read, claim with a lease, heartbeat, finish behind a fence.

Its statistics (wait estimates, metrics) are `tasks.stats`; forgetting what outlived its
lifetime is `tasks.retention`.

Every state change is one conditional UPDATE, so concurrent API processes, workers and rescuers
never need more than the database's own row locking. Finishing requires the attempt number the
worker claimed (the fence): a worker whose lease was taken over cannot finish the task again.
Over 400 lines on purpose: every transition of a task's row (claim, heartbeat, progress,
complete, fail, release, cancel, rescue) sits here, each behind the same fence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    Connection,
    Update,
    and_,
    bindparam,
    func,
    insert,
    select,
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError

from darkroom.billing import ledger
from darkroom.clock import Clock, SystemClock
from darkroom.contract import FailureCode, Status
from darkroom.db.database import Database
from darkroom.db.schema import api_keys, idempotency_keys, tasks
from darkroom.errors import InvalidRequest, RateLimited
from darkroom.tasks import outbox
from darkroom.tasks.model import Claim, IdempotencyKey, NewTask, Task
from darkroom.tasks.wakeup import WakeupSignal

LOST_WORKER_MESSAGE = "The worker running this task stopped responding"


def _failed(code: FailureCode, message: str, now: datetime) -> dict[str, object]:
    """The column values of a task that ends failed (by a worker, the rescuer or a cancel)."""
    return {
        "status": Status.FAILED.value,
        "error_code": code.value,
        "error_message": message,
        "lease_expires_at": None,
        "finished_at": now,
    }


def too_many_unfinished(limit: int, retry_after_s: int) -> RateLimited:
    """The refusal of a create past the key's unfinished-task limit."""
    return RateLimited(
        f"Too many unfinished tasks for this key (limit {limit}); wait for some to finish",
        retry_after=retry_after_s,
    )


class IdempotencyRace(Exception):
    """A concurrent create with the same Idempotency-Key committed first; replay it."""


@dataclass(frozen=True, slots=True)
class Rescued:
    """Tasks whose lease ran out: back in the queue, or failed at the attempt limit (with the
    attempt each had reached, whose result files must go)."""

    requeued: tuple[str, ...]
    failed: tuple[str, ...]
    failed_attempts: dict[str, int]


# Every poll reads one task: the statement is built once (its compiled form is cached).
_BY_ID = select(tasks).where(tasks.c.id == bindparam("task_id"))
# Creates insert with parameters: a statement per call (`.values(**row)`) costs more
# (docs/performance.md, "Choices in the code").
_INSERT_TASK = insert(tasks)
_INSERT_IDEMPOTENCY = insert(idempotency_keys)
_LOCK_KEY = select(api_keys.c.id).where(api_keys.c.id == bindparam("key_id")).with_for_update()
_UNFINISHED = select(func.count()).select_from(
    select(tasks.c.id)
    .where(
        tasks.c.api_key_id == bindparam("key_id"),
        tasks.c.status.in_([Status.PENDING.value, Status.PROCESSING.value]),
    )
    .limit(bindparam("up_to"))
    .subquery()
)


class TaskStore:
    """All task-table reads and writes. Each method is one transaction (`Database.read` or
    `Database.write`), its statements in one plain function."""

    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self.db = db
        self.clock = clock or SystemClock()  # every row's time stamp comes from it
        self.wakeup_signal = WakeupSignal(db)

    async def create(
        self,
        new: NewTask,
        *,
        max_unfinished: int | None = None,
        retry_after_s: int = 1,
        idempotency: IdempotencyKey | None = None,
    ) -> Task:
        """Insert the task and reserve its price in one transaction (`create_many` of one)."""
        keys = [idempotency] if idempotency is not None else []
        created = await self.create_many(
            [new], max_unfinished=max_unfinished, retry_after_s=retry_after_s, idempotency=keys
        )
        return created[0]

    async def create_many(
        self,
        news: Sequence[NewTask],
        *,
        max_unfinished: int | None = None,
        retry_after_s: int = 1,
        idempotency: Sequence[IdempotencyKey] = (),
    ) -> list[Task]:
        """Insert the tasks (all of one key) and reserve their prices in one transaction: all
        are queued, or none. `idempotency`, if given, holds one key per task.

        Refused, with nothing written: RateLimited when the key's unfinished tasks would pass
        `max_unfinished`, InsufficientQuota when the credits are short for them all,
        IdempotencyRace when a concurrent request with the same Idempotency-Key won.
        """
        assert news
        assert len({n.api_key_id for n in news}) == 1
        assert not idempotency or len(idempotency) == len(news)
        key_id = news[0].api_key_id

        def run(conn: Connection) -> list[Task]:
            # Creates of one key run one at a time from here (PostgreSQL: this row lock;
            # SQLite: the single writer, held since BEGIN IMMEDIATE), so the count below is
            # exact, not a guess.
            if self.db.dialect == "postgresql":
                conn.execute(_LOCK_KEY, {"key_id": key_id})
            if max_unfinished is not None:
                unfinished = self._unfinished(conn, key_id, max_unfinished)
                if unfinished + len(news) > max_unfinished:
                    raise too_many_unfinished(max_unfinished, retry_after_s)
            for new in news:
                ledger.reserve(
                    conn,
                    task_id=new.id,
                    account_id=new.account_id,
                    api_key_id=key_id,
                    price_micro=new.price_micro,
                    model=new.model,
                    quality=new.quality.value,
                    now=new.created_at,
                )
            conn.execute(_INSERT_TASK, [new.row_values() for new in news])
            if idempotency:
                rows = [
                    {
                        "api_key_id": key_id,
                        "key": key.key,
                        "request_hash": key.request_hash,
                        "task_id": new.id,
                        "created_at": new.created_at,
                    }
                    for new, key in zip(news, idempotency, strict=True)
                ]
                conn.execute(_INSERT_IDEMPOTENCY, rows)
            self.wakeup_signal.send_in_transaction(conn)
            return [Task.queued(new) for new in news]

        try:
            created = await self.db.write(run, quick=True)
        except IntegrityError as exc:
            if idempotency and await self.replay(key_id, idempotency[0]):
                raise IdempotencyRace() from exc
            raise
        self.wakeup_signal.send_after_commit()
        return created

    async def replay(self, api_key_id: int, idempotency: IdempotencyKey) -> Task | None:
        """The task an earlier create with this Idempotency-Key made, if any.

        InvalidRequest when that create had another body: a key names one request.
        """
        query = select(idempotency_keys.c.request_hash, idempotency_keys.c.task_id).where(
            idempotency_keys.c.api_key_id == api_key_id,
            idempotency_keys.c.key == idempotency.key,
        )
        found = await self.db.read(lambda conn: conn.execute(query).first(), quick=True)
        if found is None:
            return None
        if found.request_hash != idempotency.request_hash:
            raise InvalidRequest(
                "This Idempotency-Key was already used with a different request body",
                param="Idempotency-Key",
            )
        return await self.get(found.task_id)

    async def latest_group(
        self, api_key_id: int, prefix: str, request_hash: str, since: datetime
    ) -> list[Task]:
        """The tasks of the newest create since `since` of this key, body hash and idempotency
        key prefix (`prefix` + a group + `:` + index), in index order; [] if none. The OpenAI
        route finds the tasks of a request its client retries this way."""
        newest = (
            select(idempotency_keys.c.key)
            .where(
                idempotency_keys.c.api_key_id == api_key_id,
                idempotency_keys.c.request_hash == request_hash,
                idempotency_keys.c.created_at >= since,
                idempotency_keys.c.key.startswith(prefix, autoescape=True),
            )
            .order_by(idempotency_keys.c.created_at.desc(), idempotency_keys.c.id.desc())
            .limit(1)
        )

        def run(conn: Connection) -> list[str]:
            key = conn.execute(newest).scalar()
            if key is None:
                return []
            group = key.rsplit(":", 1)[0] + ":"
            rows = conn.execute(
                select(idempotency_keys.c.key, idempotency_keys.c.task_id).where(
                    idempotency_keys.c.api_key_id == api_key_id,
                    idempotency_keys.c.key.startswith(group, autoescape=True),
                )
            ).all()
            return [r.task_id for r in sorted(rows, key=lambda r: int(r.key.rsplit(":", 1)[1]))]

        task_ids = await self.db.read(run, quick=True)
        found = await self.get_many(task_ids)
        return [found[t] for t in task_ids if t in found]

    async def get(self, task_id: str) -> Task | None:
        params = {"task_id": task_id}
        row = await self.db.read(lambda conn: conn.execute(_BY_ID, params).first(), quick=True)
        return Task.from_row(row) if row else None

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, Task]:
        """The tasks of these ids that exist, in one read."""
        query = select(tasks).where(tasks.c.id.in_(list(task_ids)))
        rows = await self.db.read(lambda conn: conn.execute(query).all())
        return {row.id: Task.from_row(row) for row in rows}

    @staticmethod
    def _unfinished(conn: Connection, api_key_id: int, up_to: int) -> int:
        """The key's unfinished tasks, counted up to `up_to` (its index: no queue-wide scan)."""
        count: int = conn.execute(_UNFINISHED, {"key_id": api_key_id, "up_to": up_to}).scalar_one()
        return count

    async def has_pending(self, models: Sequence[str]) -> bool:
        """Whether any task of these models waits: a read, so idle workers take no write lock."""
        query = (
            select(tasks.c.id)
            .where(tasks.c.status == Status.PENDING.value, tasks.c.model.in_(models))
            .limit(1)
        )
        return await self.db.read(lambda conn: conn.execute(query).first() is not None)

    async def claim(
        self, worker_id: str, *, limit: int, lease_s: float, models: Sequence[str]
    ) -> list[Task]:
        """Take up to `limit` pending tasks that can share one batch, accounts in turn.

        The batch is led by the oldest pending task of the account served least recently (the
        latest start of any of its tasks; never served first), and filled with the oldest tasks
        of the same batch key. So one account's backlog delays another account's task by at
        most one batch per worker, not by the whole backlog. One statement; choosing the account
        reads each waiting task's entry in `ix_tasks_waiting` and one entry per waiting account
        in `ix_tasks_account_started`.
        """
        now = self.clock.now()
        pending = tasks.c.status == Status.PENDING.value
        waiting = and_(pending, tasks.c.model.in_(models))
        queued = (
            select(tasks.c.account_id, func.min(tasks.c.created_at).label("first_at"))
            .where(waiting)
            .group_by(tasks.c.account_id)
            .subquery("queued")
        )
        served = tasks.alias("served")
        last_served = (
            select(func.max(served.c.started_at))
            .where(served.c.account_id == queued.c.account_id)
            .scalar_subquery()
        )
        next_account = (
            select(queued.c.account_id)
            .order_by(last_served.asc().nulls_first(), queued.c.first_at, queued.c.account_id)
            .limit(1)
            .scalar_subquery()
        )
        leader = (
            select(tasks.c.id, tasks.c.batch_key)
            .where(waiting, tasks.c.account_id == next_account)
            .order_by(tasks.c.created_at, tasks.c.id)
            .limit(1)
            .cte("leader")
        )
        # The leader plus the oldest others of its batch key: an ORDER BY that put the leader
        # first would sort every task of that key, where this reads `limit` index entries.
        pick = (
            select(tasks.c.id)
            .where(
                pending,
                tasks.c.batch_key == select(leader.c.batch_key).scalar_subquery(),
                tasks.c.id != select(leader.c.id).scalar_subquery(),
            )
            .order_by(tasks.c.created_at, tasks.c.id)
            .limit(limit - 1)
        )
        if self.db.dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        # SQLite needs no row lock: BEGIN IMMEDIATE already serialises writers (see Database).
        # A CTE, not `IN (subquery)`: PostgreSQL may re-run a plain subquery per row, and with
        # SKIP LOCKED each re-run skips the rows this statement just took and picks more.
        picked = pick.cte("picked")
        # One list of ids, so the update finds its rows by primary key (with an OR of two
        # lists SQLite walked every pending task).
        chosen = union_all(select(leader.c.id), select(picked.c.id)).cte("chosen")
        where: list[ColumnElement[bool]] = [tasks.c.id.in_(select(chosen.c.id))]
        if self.db.dialect == "postgresql":
            # The leader is read without a row lock: another claim may take it meanwhile, and
            # read committed re-checks a row updated meanwhile against this. On SQLite
            # the statement runs alone, and the re-check made its planner walk the status
            # index instead of looking the ids up.
            where.append(pending)
        stmt = (
            update(tasks)
            .where(*where)
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
        rows = await self.db.write(lambda conn: conn.execute(stmt).all())
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
        expires = self.clock.now() + timedelta(seconds=lease_s)

        def run(conn: Connection) -> set[str]:
            lost: set[str] = set()
            for claim in claims:
                result = conn.execute(
                    update(tasks).where(self._fenced(claim)).values(lease_expires_at=expires)
                )
                if result.rowcount == 0:
                    lost.add(claim.task_id)
            return lost

        return await self.db.write(run)

    async def set_progress(self, progress: dict[Claim, int]) -> None:
        def run(conn: Connection) -> None:
            for claim, value in progress.items():
                conn.execute(
                    update(tasks)
                    .where(self._fenced(claim), tasks.c.progress < value)
                    .values(progress=max(0, min(99, value)))
                )

        await self.db.write(run)

    async def complete(self, claim: Claim, result_keys: Sequence[str]) -> bool:
        """Mark the task completed and charge it; False if this claim no longer holds it."""
        now = self.clock.now()
        stmt = (
            update(tasks)
            .where(self._fenced(claim))
            .values(
                status=Status.COMPLETED.value,
                progress=100,
                result_keys=list(result_keys),
                lease_expires_at=None,
                finished_at=now,
            )
        )
        return await self.db.write(lambda conn: self._end(conn, stmt, claim.task_id, True, now))

    async def fail(self, claim: Claim, code: FailureCode, message: str) -> bool:
        """Mark the task failed and refund it; False if this claim no longer holds it."""
        now = self.clock.now()
        stmt = update(tasks).where(self._fenced(claim)).values(**_failed(code, message, now))
        return await self.db.write(lambda conn: self._end(conn, stmt, claim.task_id, False, now))

    async def release(self, claims: Sequence[Claim]) -> int:
        """Put claimed tasks back in the queue with their attempt given back: the worker could
        not finish them for a reason that is neither theirs nor a lost worker's (the result
        store refused the write). Only claims still held; returns how many went back. The
        caller must have stopped touching them (heartbeats, progress) before."""

        def run(conn: Connection) -> int:
            released = 0
            for claim in claims:
                released += conn.execute(
                    update(tasks)
                    .where(self._fenced(claim))
                    .values(
                        status=Status.PENDING.value,
                        attempt=tasks.c.attempt - 1,
                        worker_id=None,
                        lease_expires_at=None,
                        progress=0,
                    )
                ).rowcount
            if released:
                self.wakeup_signal.send_in_transaction(conn)
            return released

        released = await self.db.write(run)
        if released:
            self.wakeup_signal.send_after_commit()
        return released

    def _end(
        self, conn: Connection, stmt: Update, task_id: str, completed: bool, now: datetime
    ) -> bool:
        """End the task with `stmt` (an UPDATE of its row); if it matched, settle its credits,
        then queue its callback (the contract: the callback fires after billing is settled)."""
        if conn.execute(stmt).rowcount != 1:
            return False
        self._finished(conn, task_id, completed=completed, now=now)
        return True

    @staticmethod
    def _finished(conn: Connection, task_id: str, *, completed: bool, now: datetime) -> None:
        """What must happen in the transaction that ends a task: settle its credits, then queue
        its callback."""
        ledger.settle(conn, task_id, capture=completed, now=now)
        outbox.enqueue(conn, task_id, now)

    async def cancel(
        self,
        task_id: str,
        message: str = "Cancelled by the operator",
        *,
        pending_only: bool = False,
    ) -> Task | None:
        """Fail a pending (or, unless `pending_only`, processing) task with `request_cancelled`,
        refunded, its callback queued; returns it as it ended, or None if it was not in such a
        state. A worker still generating it is fenced out: its completion is refused and its
        result discarded."""
        now = self.clock.now()
        states = [Status.PENDING.value] if pending_only else [Status.PENDING, Status.PROCESSING]
        stmt = (
            update(tasks)
            .where(tasks.c.id == task_id, tasks.c.status.in_([str(s) for s in states]))
            .values(**_failed(FailureCode.REQUEST_CANCELLED, message, now))
            .returning(*tasks.c)
        )

        def run(conn: Connection) -> Task | None:
            row = conn.execute(stmt).first()
            if row is None:
                return None
            self._finished(conn, task_id, completed=False, now=now)
            return Task.from_row(row)

        return await self.db.write(run)

    async def rescue_expired(self, *, max_attempts: int) -> Rescued:
        """Return tasks whose lease ran out to the queue, or fail them at the attempt limit."""
        now = self.clock.now()
        expired = and_(tasks.c.status == Status.PROCESSING.value, tasks.c.lease_expires_at < now)

        def run(conn: Connection) -> Rescued:
            requeued = conn.execute(
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
            if requeued_ids:
                self.wakeup_signal.send_in_transaction(conn)
            failed = conn.execute(
                update(tasks)
                .where(expired, tasks.c.attempt >= max_attempts)
                .values(**_failed(FailureCode.SERVICE_ERROR, LOST_WORKER_MESSAGE, now))
                .returning(tasks.c.id, tasks.c.attempt)
            ).all()
            for task_id, _ in failed:
                self._finished(conn, task_id, completed=False, now=now)
            return Rescued(
                requeued_ids, tuple(r.id for r in failed), {r.id: r.attempt for r in failed}
            )

        rescued = await self.db.write(run)
        if rescued.requeued:
            self.wakeup_signal.send_after_commit()
        return rescued
