"""The in-memory queue snapshot behind wait estimates: the same answers as counting the table,
one read per refresh, and this process's own new tasks counted before the next read."""

from __future__ import annotations

import pytest

from darkroom.contract import Quality
from darkroom.db.database import Database
from darkroom.tasks.queue_view import QueueView
from darkroom.tasks.stats import ModelQueue, TaskStats
from darkroom.tasks.store import TaskStore
from tests.helpers import add_task, make_account

# The SQL or the locking under test differs by backend.
pytestmark = pytest.mark.each_database


class CountingStats(TaskStats):
    reads = 0

    async def model_queue(self, model: str) -> ModelQueue:
        self.reads += 1
        return await super().model_queue(model)


async def test_the_snapshot_counts_what_waits_ahead_per_model(db: Database) -> None:
    ids = await make_account(db)
    store = TaskStore(db)
    for _ in range(3):
        await add_task(db, ids, model="other-model")
    await store.claim("busy", limit=1, lease_s=30, models=["other-model"])
    mine = [await add_task(db, ids, quality=q) for q in (Quality.K2, Quality.K1, Quality.K1)]
    await store.claim("w1", limit=1, lease_s=30, models=["krea-2-turbo"])  # takes mine[0]
    view = QueueView(TaskStats(db), refresh_s=60)
    # Waiting on krea-2-turbo: mine[1] and mine[2] (both 1K); one worker busy with it.
    expected = {
        None: {Quality.K1: 2},
        mine[0].created_at: {},
        mine[1].created_at: {},
        mine[2].created_at: {Quality.K1: 1},
    }
    for before, ahead in expected.items():
        stats = await view.queue_stats("krea-2-turbo", ids[0], before)
        assert stats.ahead == ahead and stats.active_workers == 1, before
        assert stats.queued == 2
    other = await view.queue_stats("other-model", ids[0])
    assert other.ahead == {Quality.K1: 2} and other.active_workers == 1


async def test_one_read_per_refresh_and_own_tasks_count_at_once(db: Database) -> None:
    ids = await make_account(db)
    first = await add_task(db, ids)
    stats = CountingStats(db)
    view = QueueView(stats, refresh_s=60)
    for _ in range(20):
        assert (await view.queue_stats("krea-2-turbo", ids[0])).ahead[Quality.K1] == 1
    assert stats.reads == 1
    # Queued by this process: counted at once; by another (straight into the table): at the
    # next read.
    second = await add_task(db, ids, quality=Quality.K2)
    view.note_queued("krea-2-turbo", Quality.K2, ids[0], second.created_at)
    await add_task(db, ids)
    now = await view.queue_stats("krea-2-turbo", ids[0])
    assert now.ahead == {Quality.K1: 1, Quality.K2: 1} and stats.reads == 1
    ahead_of_second = await view.queue_stats("krea-2-turbo", ids[0], second.created_at)
    assert ahead_of_second.ahead[Quality.K1] == 1 and ahead_of_second.ahead.get(Quality.K2, 0) == 0
    assert first.created_at < second.created_at

    # Past its freshness (here a fake monotonic clock), the next estimate reads again.
    ticks = [0.0]
    later = CountingStats(db)
    timed = QueueView(later, refresh_s=1, monotonic=lambda: ticks[0])
    await timed.queue_stats("krea-2-turbo", ids[0])
    ticks[0] = 0.9
    await timed.queue_stats("krea-2-turbo", ids[0])
    assert later.reads == 1
    ticks[0] = 1.1
    again = await timed.queue_stats("krea-2-turbo", ids[0])
    assert again.ahead == {Quality.K1: 2, Quality.K2: 1} and later.reads == 2


async def test_estimates_count_the_claims_order_accounts_in_turn(db: Database) -> None:
    """What the snapshot says is ahead of each task is what the claim takes before it, give or
    take the order within a turn: every other account's task at the same turn counts as ahead
    (which of them goes first depends on when each account was last served), so an estimate
    counts at most one task too many per other account waiting, and never one too few."""
    store = TaskStore(db)
    greedy, modest, third = [await make_account(db, n) for n in ("greedy", "modest", "third")]
    backlog = [await add_task(db, greedy) for _ in range(5)]
    modest_tasks = [await add_task(db, modest, quality=Quality.K2) for _ in range(2)]
    view = QueueView(TaskStats(db), refresh_s=60)
    predicted = {}
    for task in [*backlog, *modest_tasks]:
        stats = await view.queue_stats("krea-2-turbo", task.account_id, task.created_at)
        predicted[task.id] = sum(stats.ahead.values())
        assert stats.queued == 7
    # A new task of a third account: behind every account's first, before the rest.
    new = await view.queue_stats("krea-2-turbo", third[0])
    assert new.ahead == {Quality.K1: 1, Quality.K2: 1}
    assert predicted[modest_tasks[0].id] == 1 and predicted[backlog[-1].id] == 6

    taken: list[str] = []
    while batch := await store.claim("w1", limit=1, lease_s=30, models=["krea-2-turbo"]):
        taken += [t.id for t in batch]
    for task_id, ahead in predicted.items():
        assert 0 <= ahead - taken.index(task_id) <= 1  # two accounts: one other
    assert [predicted[t.id] for t in backlog] == [1, 3, 4, 5, 6]

    # Queued here after the read (the snapshot, 60 s fresh, still holds the seven): counted at
    # its account's next turn, behind its account's two and greedy's first three.
    late = await add_task(db, modest)
    view.note_queued("krea-2-turbo", Quality.K1, modest[0], late.created_at)
    stats = await view.queue_stats("krea-2-turbo", modest[0], late.created_at)
    assert stats.ahead == {Quality.K1: 3, Quality.K2: 2} and stats.queued == 8
