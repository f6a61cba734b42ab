"""The task table as a queue: claims, leases, the fence, rescue; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from darkroom.clock import utcnow
from darkroom.contract import FailureCode, Quality, Status
from darkroom.db.database import Database
from darkroom.db.schema import tasks
from darkroom.tasks.estimate import estimate_s
from darkroom.tasks.model import Claim
from darkroom.tasks.queue_view import QueueView
from darkroom.tasks.retention import TaskRetention
from darkroom.tasks.stats import QueueStats, TaskStats
from darkroom.tasks.store import LOST_WORKER_MESSAGE, TaskStore
from tests.helpers import add_task, make_account, new_task, task_count

# The SQL or the locking under test differs by backend.
pytestmark = pytest.mark.each_database

MODELS = ["krea-2-turbo"]


async def expire_lease(db: Database, task_id: str) -> None:
    async with db.transaction() as conn:
        await conn.execute(
            update(tasks)
            .where(tasks.c.id == task_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )


async def test_claim_takes_the_oldest_with_a_lease(db: Database) -> None:
    ids = await make_account(db)
    first = await add_task(db, ids)
    await add_task(db, ids)
    store = TaskStore(db)
    [claimed] = await store.claim("w1", limit=1, lease_s=30, models=MODELS)
    assert claimed.id == first.id
    assert claimed.status is Status.PROCESSING
    assert claimed.attempt == 1 and claimed.worker_id == "w1"
    assert claimed.lease_expires_at is not None and claimed.lease_expires_at > utcnow()
    assert claimed.started_at is not None


async def test_claim_ignores_other_models_and_empty_queue(db: Database) -> None:
    store = TaskStore(db)
    assert await store.claim("w1", limit=4, lease_s=30, models=MODELS) == []
    ids = await make_account(db)
    await add_task(db, ids)
    assert await store.claim("w1", limit=4, lease_s=30, models=["other-model"]) == []


async def test_batch_claims_only_compatible_tasks(db: Database) -> None:
    ids = await make_account(db)
    a = await add_task(db, ids, size="1:1")
    await add_task(db, ids, size="16:9")
    c = await add_task(db, ids, size="1:1")
    await add_task(db, ids, size="1:1", quality=Quality.K2)
    batch = await TaskStore(db).claim("w1", limit=8, lease_s=30, models=MODELS)
    assert [t.id for t in batch] == [a.id, c.id]


async def test_accounts_take_turns_at_the_claim(db: Database) -> None:
    """A backlog of 23 from one account delays another account's later task by one claim,
    not by the backlog; three accounts with a backlog each are served in turn, each in the
    order it queued."""
    store = TaskStore(db)
    greedy, modest, third = [await make_account(db, n) for n in ("greedy", "modest", "third")]
    backlog = [(await add_task(db, greedy)).id for _ in range(23)]
    late = await add_task(db, modest)
    order = []
    while batch := await store.claim("w1", limit=1, lease_s=30, models=MODELS):
        order += [t.id for t in batch]
        if late.id in order:
            break
    assert order == [backlog[0], late.id]

    queued = {ids[0]: [(await add_task(db, ids)).id for _ in range(3)] for ids in (modest, third)}
    served: list[tuple[int, str]] = []
    while batch := await store.claim("w1", limit=1, lease_s=30, models=MODELS):
        served += [(t.account_id, t.id) for t in batch]
        if len(served) == 6:
            break
    # `greedy` was served most recently, then `modest`: `third` (never served) leads.
    rounds = [account for account, _ in served]
    assert rounds == [third[0], greedy[0], modest[0]] * 2
    for account, ids in queued.items():
        assert [t for a, t in served if a == account] == ids[:2]
    assert [t for a, t in served if a == greedy[0]] == backlog[1:3]


async def test_a_batch_is_led_by_the_account_whose_turn_it_is(db: Database) -> None:
    store = TaskStore(db)
    greedy, modest = await make_account(db, "greedy"), await make_account(db, "modest")
    first = await add_task(db, greedy)
    [claimed] = await store.claim("w1", limit=1, lease_s=30, models=MODELS)
    assert claimed.id == first.id
    older = [(await add_task(db, greedy)).id for _ in range(4)]
    mine = await add_task(db, modest)
    batch = await store.claim("w1", limit=4, lease_s=30, models=MODELS)
    # `modest` was never served: its task leads the batch, the oldest of the same size fill it.
    assert {t.id for t in batch} == {mine.id, *older[:3]}


async def test_concurrent_claimers_never_share_a_task(db: Database) -> None:
    ids = await make_account(db)
    created = {(await add_task(db, ids)).id for _ in range(30)}
    store = TaskStore(db)
    seen: list[str] = []

    async def claimer(name: str) -> None:
        while batch := await store.claim(name, limit=2, lease_s=30, models=MODELS):
            seen.extend(t.id for t in batch)

    await asyncio.gather(*(claimer(f"w{i}") for i in range(6)))
    assert sorted(seen) == sorted(created)


async def test_fence_refuses_a_stale_worker(db: Database) -> None:
    ids = await make_account(db)
    task = await add_task(db, ids)
    store = TaskStore(db)
    [first] = await store.claim("w1", limit=1, lease_s=30, models=MODELS)
    stale = Claim(first.id, first.attempt)
    await expire_lease(db, task.id)
    rescued = await store.rescue_expired(max_attempts=3)
    assert rescued.requeued == (task.id,) and rescued.failed == ()
    [second] = await store.claim("w2", limit=1, lease_s=30, models=MODELS)
    assert second.attempt == 2
    assert not await store.complete(stale, ["x/0.png"])
    assert not await store.fail(stale, FailureCode.SERVICE_ERROR, "late")
    assert await store.heartbeat([stale], lease_s=30) == {task.id}
    assert await store.complete(Claim(second.id, second.attempt), [f"{task.id}/0.png"])
    assert not await store.complete(Claim(second.id, second.attempt), ["again"])
    done = await store.get(task.id)
    assert done is not None and done.status is Status.COMPLETED and done.worker_id == "w2"


async def test_rescue_fails_at_the_attempt_limit(db: Database) -> None:
    ids = await make_account(db)
    task = await add_task(db, ids)
    store = TaskStore(db)
    for attempt in (1, 2):
        [claimed] = await store.claim("w", limit=1, lease_s=30, models=MODELS)
        assert claimed.attempt == attempt
        await expire_lease(db, task.id)
        assert (await store.rescue_expired(max_attempts=2)).requeued == (
            (task.id,) if attempt < 2 else ()
        )
    failed = await store.get(task.id)
    assert failed is not None and failed.status is Status.FAILED
    assert failed.error_code is FailureCode.SERVICE_ERROR
    assert failed.error_message == LOST_WORKER_MESSAGE
    assert failed.finished_at is not None


async def test_live_lease_is_not_rescued_and_heartbeat_extends_it(db: Database) -> None:
    ids = await make_account(db)
    task = await add_task(db, ids)
    store = TaskStore(db)
    [claimed] = await store.claim("w", limit=1, lease_s=1, models=MODELS)
    assert await store.heartbeat([Claim(task.id, claimed.attempt)], lease_s=60) == set()
    assert (await store.rescue_expired(max_attempts=3)).requeued == ()
    extended = await store.get(task.id)
    assert extended is not None and extended.lease_expires_at is not None
    assert extended.lease_expires_at > utcnow() + timedelta(seconds=50)


async def test_progress_only_rises(db: Database) -> None:
    ids = await make_account(db)
    task = await add_task(db, ids)
    store = TaskStore(db)
    [claimed] = await store.claim("w", limit=1, lease_s=30, models=MODELS)
    claim = Claim(task.id, claimed.attempt)
    await store.set_progress({claim: 50})
    await store.set_progress({claim: 20})
    current = await store.get(task.id)
    assert current is not None and current.progress == 50


async def test_check_constraints_hold_terminal_states_to_timestamps(db: Database) -> None:
    ids = await make_account(db)
    task = await add_task(db, ids)
    with pytest.raises(IntegrityError):
        async with db.transaction() as conn:
            await conn.execute(
                update(tasks).where(tasks.c.id == task.id).values(status="completed")
            )
    with pytest.raises(IntegrityError):
        async with db.transaction() as conn:
            await conn.execute(update(tasks).where(tasks.c.id == task.id).values(status="bogus"))


async def test_expired_results_are_listed_until_marked_and_then_forgotten(db: Database) -> None:
    ids = await make_account(db)
    done, refused = await add_task(db, ids), await add_task(db, ids)
    store = TaskStore(db)
    for task in (done, refused):
        [claimed] = await store.claim("w", limit=1, lease_s=30, models=MODELS)
        assert claimed.id == task.id
    assert await store.complete(Claim(done.id, 1), [f"{done.id}/1.png"])
    assert await store.fail(Claim(refused.id, 1), FailureCode.SERVICE_ERROR, "x")
    assert await TaskRetention(db).expired_results(ttl_s=3600) == []
    async with db.transaction() as conn:
        await conn.execute(update(tasks).values(finished_at=utcnow() - timedelta(hours=25)))

    expired = await TaskRetention(db).expired_results(ttl_s=86_400)
    assert {(e.task_id, e.attempt, e.result_keys) for e in expired} == {
        (done.id, 1, (f"{done.id}/1.png",)),
        (refused.id, 1, ()),  # failed: a crash may still have left its attempt's file
    }
    # Nothing is forgotten before its files are marked gone.
    assert await TaskRetention(db).delete_finished_before(retention_s=3600) == 0
    await TaskRetention(db).mark_results_deleted(done.id)
    assert [e.task_id for e in await TaskRetention(db).expired_results(ttl_s=86_400)] == [
        refused.id
    ]
    assert await TaskRetention(db).delete_finished_before(retention_s=3600) == 1
    assert await store.get(done.id) is None
    assert await store.get(refused.id) is not None


async def test_rescue_reports_the_attempt_each_failed_task_reached(db: Database) -> None:
    ids = await make_account(db)
    task = await add_task(db, ids)
    store = TaskStore(db)
    [claimed] = await store.claim("w", limit=1, lease_s=30, models=MODELS)
    await expire_lease(db, task.id)
    rescued = await store.rescue_expired(max_attempts=1)
    assert rescued.failed == (task.id,)
    assert rescued.failed_attempts == {task.id: claimed.attempt}


async def test_wait_estimates_count_only_the_tasks_own_model(db: Database) -> None:
    ids = await make_account(db)
    store = TaskStore(db)
    for _ in range(6):
        await add_task(db, ids, model="other-model")
    await store.claim("other-worker", limit=1, lease_s=30, models=["other-model"])
    mine = [await add_task(db, ids, quality=q) for q in (Quality.K2, Quality.K1, Quality.K1)]

    queue = QueueView(TaskStats(db))
    stats = await queue.queue_stats("krea-2-turbo", ids[0], before=mine[-1].created_at)
    assert stats.ahead == {Quality.K2: 1, Quality.K1: 1}
    assert stats.active_workers == 0, "the busy worker serves another model"
    whole = await queue.queue_stats("other-model", ids[0])
    assert whole.ahead == {Quality.K1: 5} and whole.active_workers == 1


def test_an_estimate_weighs_each_task_ahead_by_its_own_quality() -> None:
    stats = QueueStats(
        ahead={Quality.K2: 1, Quality.K1: 2},
        queued=3,
        active_workers=1,
        recent_durations_s={Quality.K1: (2.0, 2.0, 4.0), Quality.K2: (10.0,)},
    )
    # Its own 2 s, then one 2K task (10 s) and two 1K tasks (2 s each) ahead on one worker.
    assert estimate_s(stats, Quality.K1, Status.PENDING, 0) == 2 + 10 + 2 * 2
    assert (
        estimate_s(dataclasses.replace(stats, active_workers=2), Quality.K1, Status.PENDING, 0)
        == 2 + 7
    )
    assert estimate_s(stats, Quality.K1, Status.PROCESSING, 50) == 1


async def test_a_created_task_is_what_its_row_reads_back(db: Database) -> None:
    ids = await make_account(db)
    made = await add_task(db, ids)
    assert await TaskStore(db).get(made.id) == made


async def test_create_many_queues_all_or_none(db: Database) -> None:
    from darkroom.accounts.store import AccountStore
    from darkroom.errors import InsufficientQuota, RateLimited

    store = TaskStore(db)
    account = await AccountStore(db).create_account("poor", credits_micro=2 * 450_000)
    key, _ = await AccountStore(db).create_key("poor")
    ids = (account.id, key.id)
    with pytest.raises(InsufficientQuota):  # two are affordable, three are not
        await store.create_many([new_task(ids, seed=s) for s in (1, 2, 3)])
    with pytest.raises(RateLimited):
        await store.create_many([new_task(ids, seed=s) for s in (1, 2)], max_unfinished=1)
    assert await task_count(db) == 0
    made = await store.create_many([new_task(ids, seed=s) for s in (1, 2)], max_unfinished=2)
    assert [t.seed for t in made] == [1, 2]
    assert [await store.get(t.id) for t in made] == made


async def test_the_latest_group_of_a_body_is_found_within_its_window(db: Database) -> None:
    from darkroom.tasks.model import IdempotencyKey

    store = TaskStore(db)
    ids = await make_account(db)
    since = utcnow() - timedelta(minutes=5)

    async def group(name: str, body: str, n: int) -> list[str]:
        keys = [IdempotencyKey(f"openai:{name}:{i}", body) for i in range(n)]
        made = await store.create_many([new_task(ids, seed=i) for i in range(n)], idempotency=keys)
        return [t.id for t in made]

    assert await store.latest_group(ids[1], "openai:", "body-a", since) == []
    older = await group("g1", "body-a", 3)
    assert [t.id for t in await store.latest_group(ids[1], "openai:", "body-a", since)] == older
    newer = await group("g2", "body-a", 12)  # index 10 sorts after 9, not after 1
    await group("g3", "body-b", 1)
    found = await store.latest_group(ids[1], "openai:", "body-a", since)
    assert [t.id for t in found] == newer
    assert await store.latest_group(ids[1], "openai:", "body-a", utcnow()) == []
    assert await store.latest_group(ids[1] + 1, "openai:", "body-a", since) == []
    assert await store.latest_group(ids[1], "other:", "body-a", since) == []


async def test_a_pending_only_cancel_leaves_a_generating_task_alone(db: Database) -> None:
    store = TaskStore(db)
    ids = await make_account(db)
    generating, waiting = await add_task(db, ids), await add_task(db, ids)
    await store.claim("w1", limit=1, lease_s=30, models=MODELS)
    assert await store.cancel(generating.id, "gone", pending_only=True) is None
    cancelled = await store.cancel(waiting.id, "gone", pending_only=True)
    assert cancelled is not None and cancelled.error_code is FailureCode.REQUEST_CANCELLED
    assert (await store.get(generating.id)).status is Status.PROCESSING  # type: ignore[union-attr]
