"""The in-memory queue snapshot behind wait estimates: the same answers as counting the table,
one read per refresh, and this process's own new tasks counted before the next read."""

from __future__ import annotations

from darkroom.contract import Quality
from darkroom.db.database import Database
from darkroom.tasks.queue_view import QueueView
from darkroom.tasks.stats import ModelQueue, TaskStats
from darkroom.tasks.store import TaskStore
from tests.helpers import add_task, make_account


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
        for quality in Quality:
            stats = await view.queue_stats("krea-2-turbo", quality, before)
            assert stats.ahead == ahead and stats.active_workers == 1, (before, quality)
    other = await view.queue_stats("other-model", Quality.K1)
    assert other.ahead == {Quality.K1: 2} and other.active_workers == 1


async def test_one_read_per_refresh_and_own_tasks_count_at_once(db: Database) -> None:
    ids = await make_account(db)
    first = await add_task(db, ids)
    stats = CountingStats(db)
    view = QueueView(stats, refresh_s=60)
    for _ in range(20):
        assert (await view.queue_stats("krea-2-turbo", Quality.K1)).ahead[Quality.K1] == 1
    assert stats.reads == 1
    # Queued by this process: counted at once; by another (straight into the table): at the
    # next read.
    second = await add_task(db, ids, quality=Quality.K2)
    view.note_queued("krea-2-turbo", Quality.K2, second.created_at)
    await add_task(db, ids)
    now = await view.queue_stats("krea-2-turbo", Quality.K1)
    assert now.ahead == {Quality.K1: 1, Quality.K2: 1} and stats.reads == 1
    ahead_of_second = await view.queue_stats("krea-2-turbo", Quality.K1, second.created_at)
    assert ahead_of_second.ahead[Quality.K1] == 1 and ahead_of_second.ahead.get(Quality.K2, 0) == 0
    assert first.created_at < second.created_at

    # Past its freshness (here a fake monotonic clock), the next estimate reads again.
    ticks = [0.0]
    later = CountingStats(db)
    timed = QueueView(later, refresh_s=1, monotonic=lambda: ticks[0])
    await timed.queue_stats("krea-2-turbo", Quality.K1)
    ticks[0] = 0.9
    await timed.queue_stats("krea-2-turbo", Quality.K1)
    assert later.reads == 1
    ticks[0] = 1.1
    again = await timed.queue_stats("krea-2-turbo", Quality.K1)
    assert again.ahead == {Quality.K1: 2, Quality.K2: 1} and later.reads == 2
