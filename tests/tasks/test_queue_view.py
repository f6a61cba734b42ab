"""The in-memory queue snapshot behind wait estimates: the same answers as counting the table,
one read per refresh, and this process's own new tasks counted before the next read."""

from __future__ import annotations

from darkroom.contract import Quality
from darkroom.db.database import Database
from darkroom.tasks.queue_view import QueueView
from darkroom.tasks.stats import ModelQueue, QueueStats, TaskStats
from darkroom.tasks.store import TaskStore
from tests.helpers import add_task, make_account

MODELS = ["krea-2-turbo", "other-model"]


class CountingStats(TaskStats):
    reads = 0

    async def model_queue(self, model: str) -> ModelQueue:
        self.reads += 1
        return await super().model_queue(model)


def same(a: QueueStats, b: QueueStats) -> bool:
    """Equal, counting a quality with nothing ahead as absent."""
    return (
        {q: n for q, n in a.ahead.items() if n} == {q: n for q, n in b.ahead.items() if n}
        and a.active_workers == b.active_workers
        and all(a.recent_durations_s[q] == b.recent_durations_s[q] for q in b.recent_durations_s)
    )


async def test_the_snapshot_answers_as_the_table_does(db: Database) -> None:
    ids = await make_account(db)
    store = TaskStore(db)
    for _ in range(3):
        await add_task(db, ids, model="other-model")
    await store.claim("busy", limit=1, lease_s=30, models=["other-model"])
    mine = [await add_task(db, ids, quality=q) for q in (Quality.K2, Quality.K1, Quality.K1)]
    await store.claim("w1", limit=1, lease_s=30, models=["krea-2-turbo"])  # takes mine[0]
    exact, view = TaskStats(db), QueueView(TaskStats(db), refresh_s=60)
    for model in MODELS:
        for quality in Quality:
            for before in [None, *(t.created_at for t in mine)]:
                assert same(
                    await view.queue_stats(model, quality, before),
                    await exact.queue_stats(model, quality, before),
                ), (model, quality, before)


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
    assert ahead_of_second.ahead[Quality.K1] == 1 and ahead_of_second.ahead[Quality.K2] == 0
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
