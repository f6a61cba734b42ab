"""The task table as a queue, in memory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from darkroom.clock import Clock, SystemClock
from darkroom.contract import FailureCode, Quality, Status
from darkroom.errors import InsufficientQuota, InvalidRequest
from darkroom.tasks.model import Claim, IdempotencyKey, NewTask, Task
from darkroom.tasks.retention import ExpiredResults
from darkroom.tasks.stats import ModelQueue, Waiting
from darkroom.tasks.store import (
    LOST_WORKER_MESSAGE,
    IdempotencyRace,
    Rescued,
    too_many_unfinished,
)
from darkroom.testing.outbox import InMemoryOutbox


class InMemoryTaskStore:
    """The task table as a queue, in memory: `darkroom.tasks.store.TaskStore`'s methods and
    behaviour without a database, for millisecond tests of the code above the table layer (the
    create use case, a worker's claims). tests/tasks/test_conformance.py runs one suite on it
    and on the real store on SQLite and PostgreSQL, so the two stay the same where it counts:
    the claim's order and batches, the attempt fence, leases on the clock, the unfinished-task
    limit, reserve/capture/release, idempotency.

    With an `InMemoryOutbox`, an ended task's callback is queued there as the real store queues
    it in the outbox table. `TaskRetention`'s sweeps run on the same rows.

    Credits are one balance per account (micro-credits, `balances`), taken at create and given
    back when a task fails; keys' own credit limits are not modelled. The callbacks ended tasks
    would queue are listed, in order, in `callbacks_queued`. One event loop, no concurrency:
    every method runs to its end before another starts.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        balances: dict[int, int] | None = None,
        *,
        outbox: InMemoryOutbox | None = None,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.outbox = outbox
        self.balances: dict[int, int] = dict(balances or {})
        self.used: dict[int, int] = {}
        self.rows: dict[str, Task] = {}
        # (key id, Idempotency-Key) -> (request hash, task id, created at)
        self.idempotency: dict[tuple[int, str], tuple[str, str, datetime]] = {}
        self.callbacks_queued: list[str] = []

    async def create(
        self,
        new: NewTask,
        *,
        max_unfinished: int | None = None,
        retry_after_s: int = 1,
        idempotency: IdempotencyKey | None = None,
    ) -> Task:
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
        key_id = news[0].api_key_id
        if max_unfinished is not None:
            unfinished = sum(
                t.api_key_id == key_id and not t.status.is_terminal() for t in self.rows.values()
            )
            if unfinished + len(news) > max_unfinished:
                raise too_many_unfinished(max_unfinished, retry_after_s)
        balances = dict(self.balances)
        for new in news:
            if balances.get(new.account_id, 0) < new.price_micro:
                raise InsufficientQuota(
                    "Insufficient credits: the account's balance is below the price"
                )
            balances[new.account_id] -= new.price_micro
        if any((key_id, key.key) in self.idempotency for key in idempotency):
            raise IdempotencyRace()
        self.balances = balances
        for new in news:
            self.rows[new.id] = Task.queued(new)
        for new, key in zip(news, idempotency, strict=False):
            self.idempotency[key_id, key.key] = (key.request_hash, new.id, new.created_at)
        return [self.rows[new.id] for new in news]

    async def replay(self, api_key_id: int, idempotency: IdempotencyKey) -> Task | None:
        found = self.idempotency.get((api_key_id, idempotency.key))
        if found is None:
            return None
        if found[0] != idempotency.request_hash:
            raise InvalidRequest(
                "This Idempotency-Key was already used with a different request body",
                param="Idempotency-Key",
            )
        return self.rows.get(found[1])

    async def get(self, task_id: str) -> Task | None:
        return self.rows.get(task_id)

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, Task]:
        return {i: self.rows[i] for i in task_ids if i in self.rows}

    async def has_pending(self, models: Sequence[str]) -> bool:
        return any(t.status is Status.PENDING and t.model in models for t in self.rows.values())

    async def model_queue(self, model: str) -> ModelQueue:
        """`TaskStats.model_queue` on these rows, so a `QueueView` can read its snapshot here."""
        rows = sorted(self.rows.values(), key=lambda t: (t.created_at, t.id))
        busy = {t.worker_id for t in rows if t.status is Status.PROCESSING and t.model == model}
        done = sorted(
            (t for t in rows if t.status is Status.COMPLETED and t.model == model),
            key=lambda t: t.finished_at or t.created_at,
            reverse=True,
        )
        return ModelQueue(
            pending=[
                Waiting(t.created_at.timestamp(), t.account_id, t.quality)
                for t in rows
                if t.status is Status.PENDING and t.model == model
            ],
            active_workers=len(busy),
            recent_durations_s={
                q: tuple(
                    (t.finished_at - t.started_at).total_seconds()
                    for t in done
                    if t.quality is q and t.started_at and t.finished_at
                )[:20]
                for q in Quality
            },
        )

    async def claim(
        self, worker_id: str, *, limit: int, lease_s: float, models: Sequence[str]
    ) -> list[Task]:
        """The real claim's choice: the oldest task of the account served least recently
        (never served first), then the oldest others of its batch key."""
        now = self.clock.now()
        waiting = [
            t for t in self.rows.values() if t.status is Status.PENDING and t.model in models
        ]
        if not waiting:
            return []

        def turn(account: int) -> tuple[bool, datetime, datetime, int]:
            starts = [
                t.started_at
                for t in self.rows.values()
                if t.account_id == account and t.started_at is not None
            ]
            first = min(t.created_at for t in waiting if t.account_id == account)
            return (bool(starts), max(starts, default=first), first, account)

        account = min({t.account_id for t in waiting}, key=turn)
        oldest = sorted(waiting, key=lambda t: (t.created_at, t.id))
        leader = next(t for t in oldest if t.account_id == account)
        others = [
            t
            for t in sorted(self.rows.values(), key=lambda t: (t.created_at, t.id))
            if t.status is Status.PENDING and t.batch_key == leader.batch_key and t.id != leader.id
        ]
        claimed = []
        for task in sorted([leader, *others[: limit - 1]], key=lambda t: (t.created_at, t.id)):
            claimed.append(
                self._put(
                    task,
                    status=Status.PROCESSING,
                    attempt=task.attempt + 1,
                    worker_id=worker_id,
                    lease_expires_at=now + timedelta(seconds=lease_s),
                    started_at=task.started_at or now,
                    progress=0,
                )
            )
        return claimed

    def _held(self, claim: Claim) -> Task | None:
        """The task, if it is still this claim's (the fence)."""
        task = self.rows.get(claim.task_id)
        if task is None or task.attempt != claim.attempt or task.status is not Status.PROCESSING:
            return None
        return task

    def _put(self, task: Task, **changes: object) -> Task:
        self.rows[task.id] = replace(task, **changes)  # type: ignore[arg-type]
        return self.rows[task.id]

    async def heartbeat(self, claims: Sequence[Claim], *, lease_s: float) -> set[str]:
        expires = self.clock.now() + timedelta(seconds=lease_s)
        lost = set()
        for claim in claims:
            task = self._held(claim)
            if task is None:
                lost.add(claim.task_id)
            else:
                self._put(task, lease_expires_at=expires)
        return lost

    async def set_progress(self, progress: dict[Claim, int]) -> None:
        for claim, value in progress.items():
            task = self._held(claim)
            if task is not None and task.progress < value:
                self._put(task, progress=max(0, min(99, value)))

    async def complete(self, claim: Claim, result_keys: Sequence[str]) -> bool:
        task = self._held(claim)
        if task is None:
            return False
        ended = self._put(
            task,
            status=Status.COMPLETED,
            progress=100,
            result_keys=tuple(result_keys),
            lease_expires_at=None,
            finished_at=self.clock.now(),
            charged_micro=task.price_micro,
        )
        self.used[task.account_id] = self.used.get(task.account_id, 0) + task.price_micro
        self._queue_callback(ended)
        return True

    async def fail(self, claim: Claim, code: FailureCode, message: str) -> bool:
        task = self._held(claim)
        if task is None:
            return False
        self._end_failed(task, code, message)
        return True

    def _end_failed(self, task: Task, code: FailureCode, message: str) -> Task:
        ended = self._put(
            task,
            status=Status.FAILED,
            error_code=code,
            error_message=message,
            lease_expires_at=None,
            finished_at=self.clock.now(),
        )
        self.balances[task.account_id] = self.balances.get(task.account_id, 0) + task.price_micro
        self._queue_callback(ended)
        return ended

    def _queue_callback(self, task: Task) -> None:
        if task.callback_url is not None:
            self.callbacks_queued.append(task.id)
            if self.outbox is not None:
                self.outbox.enqueue(task)

    async def release(self, claims: Sequence[Claim]) -> int:
        released = 0
        for claim in claims:
            task = self._held(claim)
            if task is not None:
                self._put(
                    task,
                    status=Status.PENDING,
                    attempt=task.attempt - 1,
                    worker_id=None,
                    lease_expires_at=None,
                    progress=0,
                )
                released += 1
        return released

    async def cancel(
        self,
        task_id: str,
        message: str = "Cancelled by the operator",
        *,
        pending_only: bool = False,
    ) -> Task | None:
        task = self.rows.get(task_id)
        states = {Status.PENDING} if pending_only else {Status.PENDING, Status.PROCESSING}
        if task is None or task.status not in states:
            return None
        return self._end_failed(task, FailureCode.REQUEST_CANCELLED, message)

    async def rescue_expired(self, *, max_attempts: int) -> Rescued:
        now = self.clock.now()
        expired = [
            t
            for t in self.rows.values()
            if t.status is Status.PROCESSING
            and t.lease_expires_at is not None
            and t.lease_expires_at < now
        ]
        requeued, failed = [], {}
        for task in expired:
            if task.attempt < max_attempts:
                self._put(
                    task, status=Status.PENDING, worker_id=None, lease_expires_at=None, progress=0
                )
                requeued.append(task.id)
            else:
                self._end_failed(task, FailureCode.SERVICE_ERROR, LOST_WORKER_MESSAGE)
                failed[task.id] = task.attempt
        return Rescued(tuple(requeued), tuple(failed), failed)

    # TaskRetention's sweeps, on the same rows.

    async def expired_results(self, *, ttl_s: float, limit: int = 500) -> list[ExpiredResults]:
        cutoff = self.clock.now() - timedelta(seconds=ttl_s)
        ended = sorted(
            (
                t
                for t in self.rows.values()
                if t.status in (Status.COMPLETED, Status.FAILED)
                and t.finished_at is not None
                and t.finished_at < cutoff
                and not t.results_deleted
            ),
            key=lambda t: t.finished_at or cutoff,
        )
        return [ExpiredResults(t.id, t.attempt, t.result_keys) for t in ended[:limit]]

    async def mark_results_deleted(self, task_id: str) -> None:
        if task_id in self.rows:
            self._put(self.rows[task_id], results_deleted=True)

    async def delete_finished_before(self, *, retention_s: float) -> int:
        cutoff = self.clock.now() - timedelta(seconds=retention_s)
        gone = [
            t.id
            for t in self.rows.values()
            if t.finished_at is not None and t.finished_at < cutoff and t.results_deleted
        ]
        for task_id in gone:
            del self.rows[task_id]
        return len(gone)

    async def forget_idempotency_keys_before(self, *, age_s: float) -> int:
        cutoff = self.clock.now() - timedelta(seconds=age_s)
        old = [key for key, (_, _, created) in self.idempotency.items() if created < cutoff]
        for key in old:
            del self.idempotency[key]
        return len(old)
