"""One suite for every implementation of the task table as a queue: the real `TaskStore` on
SQLite and on PostgreSQL, and `darkroom.testing.InMemoryTaskStore`, the fake that tests above
the table layer run on. What one does, the others must: the claim's order and batches, the
attempt fence, leases on the clock, the unfinished-task limit, reserve/capture/release, the
callbacks an ended task queues, idempotency. The stores and the clock: tests/tasks/conftest.py."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from darkroom.contract import FailureCode, Quality, Status
from darkroom.errors import InsufficientQuota, InvalidRequest, RateLimited
from darkroom.tasks.model import Claim, IdempotencyKey
from darkroom.tasks.store import LOST_WORKER_MESSAGE

from .conftest import Tables

MODELS = ["krea-2-turbo"]
PRICE = 450_000  # 1K's, in micro-credits (tests.helpers.new_task)
LEASE_S = 30


async def test_a_claim_serves_accounts_in_turn_and_fills_the_batch(tables: Tables) -> None:
    store = tables.store
    busy = await tables.fund("busy", 10 * PRICE)
    quiet = await tables.fund("quiet", 10 * PRICE)
    first = [await store.create(tables.task(busy)) for _ in range(3)]
    wide = await store.create(tables.task(busy, size="16:9"))
    late = await store.create(tables.task(quiet))

    async def claim(worker: str, limit: int) -> list[Any]:
        claimed: list[Any] = await store.claim(worker, limit=limit, lease_s=LEASE_S, models=MODELS)
        return claimed

    # Nobody served yet: the oldest task's account leads, its batch key fills the rest.
    batch = await store.claim("w1", limit=2, lease_s=LEASE_S, models=MODELS)
    assert [t.id for t in batch] == [first[0].id, first[1].id]
    assert all(t.status is Status.PROCESSING and t.attempt == 1 for t in batch)
    assert all(t.worker_id == "w1" and t.started_at == batch[0].started_at for t in batch)
    # busy was just served: quiet's task leads now, though busy's are older.
    tables.clock.advance(1)
    assert [t.id for t in await claim("w2", 1)] == [late.id]
    tables.clock.advance(1)  # busy was served before quiet: its turn, oldest first
    assert [t.id for t in await claim("w3", 4)] == [first[2].id]  # alone of its batch key
    tables.clock.advance(1)
    assert [t.id for t in await claim("w4", 4)] == [wide.id]
    assert await claim("w5", 4) == []
    assert not await store.has_pending(MODELS)


async def test_the_fence_and_the_lease_on_the_clock(tables: Tables) -> None:
    store = tables.store
    ids = await tables.fund("a", 10 * PRICE)
    task = await store.create(tables.task(ids))
    [held] = await store.claim("w1", limit=1, lease_s=LEASE_S, models=MODELS)
    first = Claim(held.id, held.attempt)
    tables.clock.advance(LEASE_S - 1)
    assert await store.heartbeat([first], lease_s=LEASE_S) == set()
    tables.clock.advance(LEASE_S - 1)  # within the extended lease: nothing to rescue
    assert (await store.rescue_expired(max_attempts=3)).requeued == ()
    tables.clock.advance(2)
    rescued = await store.rescue_expired(max_attempts=3)
    assert (rescued.requeued, rescued.failed) == ((task.id,), ())
    again = await store.get(task.id)
    assert (again.status, again.attempt, again.worker_id) == (Status.PENDING, 1, None)
    [retaken] = await store.claim("w2", limit=1, lease_s=LEASE_S, models=MODELS)
    assert retaken.attempt == 2
    # The first worker's claim is fenced out of everything.
    assert await store.heartbeat([first], lease_s=LEASE_S) == {task.id}
    await store.set_progress({first: 50})
    assert not await store.complete(first, ["stale.png"])
    assert not await store.fail(first, FailureCode.SERVICE_ERROR, "stale")
    assert await store.release([first]) == 0
    second = Claim(retaken.id, retaken.attempt)
    await store.set_progress({second: 40})
    await store.set_progress({second: 30})  # progress never goes back
    await store.set_progress({second: 250})  # nor reaches 100 before the end
    assert (await store.get(task.id)).progress == 99
    assert await store.complete(second, [f"{task.id}/2/0.png"])
    done = await store.get(task.id)
    assert (done.status, done.progress, done.result_keys) == (
        Status.COMPLETED,
        100,
        (f"{task.id}/2/0.png",),
    )
    assert done.finished_at == tables.clock.now() and done.lease_expires_at is None


async def test_money_moves_once_and_ended_tasks_queue_their_callbacks(tables: Tables) -> None:
    store = tables.store
    ids = await tables.fund("a", 3 * PRICE)
    hooked = await store.create(tables.task(ids, callback_url="https://hooks.test/a"))
    quiet = await store.create(tables.task(ids))
    cancelled = await store.create(tables.task(ids, callback_url="https://hooks.test/c"))
    assert await tables.balance(ids[0]) == 0
    assert (await store.cancel(cancelled.id, pending_only=True)).error_code is (
        FailureCode.REQUEST_CANCELLED
    )
    assert await store.cancel(cancelled.id) is None  # ended: nothing more happens
    assert await tables.balance(ids[0]) == PRICE
    a, b = await store.claim("w", limit=2, lease_s=LEASE_S, models=MODELS)
    assert await store.complete(Claim(a.id, a.attempt), ["a.png"])
    assert await store.fail(Claim(b.id, b.attempt), FailureCode.GENERATION_FAILED_NO_CONTENT, "x")
    assert not await store.complete(Claim(a.id, a.attempt), ["again.png"])
    assert await tables.balance(ids[0]) == 2 * PRICE  # the cancelled and the failed came back
    assert (await store.get(hooked.id)).charged_micro == PRICE
    assert (await store.get(quiet.id)).charged_micro is None
    assert await tables.callbacks() == [cancelled.id, hooked.id]


async def test_rescue_fails_a_task_at_its_attempt_limit_and_refunds_it(tables: Tables) -> None:
    store = tables.store
    ids = await tables.fund("a", PRICE)
    task = await store.create(tables.task(ids, callback_url="https://hooks.test/r"))
    [held] = await store.claim("w", limit=1, lease_s=LEASE_S, models=MODELS)
    tables.clock.advance(LEASE_S + 1)
    assert (await store.rescue_expired(max_attempts=2)).requeued == (task.id,)
    [held] = await store.claim("w", limit=1, lease_s=LEASE_S, models=MODELS)
    assert held.attempt == 2
    tables.clock.advance(LEASE_S + 1)
    rescued = await store.rescue_expired(max_attempts=2)
    assert (rescued.requeued, rescued.failed, rescued.failed_attempts) == (
        (),
        (task.id,),
        {task.id: 2},
    )
    failed = await store.get(task.id)
    assert (failed.status, failed.error_code, failed.error_message) == (
        Status.FAILED,
        FailureCode.SERVICE_ERROR,
        LOST_WORKER_MESSAGE,
    )
    assert await tables.balance(ids[0]) == PRICE
    assert await tables.callbacks() == [task.id]


async def test_refusals_write_nothing(tables: Tables) -> None:
    store = tables.store
    ids = await tables.fund("a", 3 * PRICE)
    await store.create(tables.task(ids), max_unfinished=2)
    with pytest.raises(RateLimited):
        await store.create_many([tables.task(ids), tables.task(ids)], max_unfinished=2)
    with pytest.raises(InsufficientQuota):  # two fit the balance, three do not: none queued
        await store.create_many([tables.task(ids) for _ in range(3)])
    assert await tables.balance(ids[0]) == 2 * PRICE
    assert len(await store.claim("w", limit=16, lease_s=LEASE_S, models=MODELS)) == 1
    two_k = dataclasses.replace(tables.task(ids, quality=Quality.K2), price_micro=3 * PRICE)
    with pytest.raises(InsufficientQuota):
        await store.create(two_k)


async def test_an_idempotency_key_replays_its_task_and_names_one_body(tables: Tables) -> None:
    store = tables.store
    ids = await tables.fund("a", 10 * PRICE)
    key = IdempotencyKey("retry-1", "hash-a")
    made = await store.create(tables.task(ids), idempotency=key)
    assert (await store.replay(ids[1], key)).id == made.id
    assert await store.replay(ids[1], IdempotencyKey("retry-2", "hash-a")) is None
    with pytest.raises(InvalidRequest):
        await store.replay(ids[1], IdempotencyKey("retry-1", "hash-b"))
    assert await tables.balance(ids[0]) == 9 * PRICE


async def test_a_released_claim_gives_its_attempt_back(tables: Tables) -> None:
    store = tables.store
    ids = await tables.fund("a", 10 * PRICE)
    task = await store.create(tables.task(ids))
    [held] = await store.claim("w", limit=1, lease_s=LEASE_S, models=MODELS)
    await store.set_progress({Claim(held.id, held.attempt): 60})
    assert await store.release([Claim(held.id, held.attempt)]) == 1
    back = await store.get(task.id)
    assert (back.status, back.attempt, back.progress, back.worker_id) == (
        Status.PENDING,
        0,
        0,
        None,
    )
    [again] = await store.claim("w", limit=1, lease_s=LEASE_S, models=MODELS)
    assert again.attempt == 1
