"""The worker loop on the in-memory task table (darkroom.testing.InMemoryTaskStore) with the
fake engine: claim, generate, store, complete or fail, in milliseconds, no database. The table
is held to the real store's behaviour by tests/tasks/test_conformance.py; the loop on a real
database and the tiny engine is tests/worker/test_worker.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from darkroom.contract import FailureCode, Status
from darkroom.db.database import Database
from darkroom.moderation.image import ImageModeration
from darkroom.storage.local import LocalStorage
from darkroom.testing import FakeClock, FakeEngine, InMemoryTaskStore
from darkroom.worker.worker import Worker, WorkerPolicy
from tests.helpers import new_task

POLICY = WorkerPolicy(
    batch_size=4,
    lease_s=60,
    heartbeat_s=10,
    poll_interval_s=1,
    progress_flush_s=0.5,
    png_compress_level=1,
    database_outage_s=60,
    ready_file=None,
)
IDS = (1, 11)


class OutOfMemoryError(RuntimeError):
    """Named like torch's, which the worker recognises by name (no torch import in the loop)."""


def worker(tmp_path: Path, table: InMemoryTaskStore, engine: FakeEngine) -> Worker:
    return Worker(
        POLICY,
        Database(f"sqlite+aiosqlite:///{tmp_path / 'never-opened.db'}"),
        engine,  # type: ignore[arg-type]
        LocalStorage(tmp_path / "results"),
        moderation=ImageModeration(None, basic_threshold=0.6, strict_threshold=0.3),
        worker_id="w",
        store=table,  # type: ignore[arg-type]
    )


@pytest.fixture
def table() -> InMemoryTaskStore:
    return InMemoryTaskStore(FakeClock(), balances={IDS[0]: 10_000_000})


async def test_a_batch_is_generated_stored_and_completed(
    tmp_path: Path, table: InMemoryTaskStore
) -> None:
    made = [
        await table.create(new_task(IDS, seed=seed, callback_url="https://hooks.test/x"))
        for seed in (1, 2, 3)
    ]
    other = await table.create(new_task(IDS, size="16:9"))
    engine = FakeEngine()
    loop = worker(tmp_path, table, engine)
    assert await loop.run_once()
    await loop.drain()
    assert [len(b.jobs) for b in engine.batches] == [3]  # one batch: the same pixel size
    for task in made:
        done = await table.get(task.id)
        assert (done.status, done.progress, done.charged_micro) == (
            Status.COMPLETED,
            100,
            task.price_micro,
        )
        [key] = done.result_keys
        assert (tmp_path / "results" / key).read_bytes()[:4] == b"\x89PNG"
    assert table.callbacks_queued == [t.id for t in made]
    assert await loop.run_once() and [len(b.jobs) for b in engine.batches] == [3, 1]
    await loop.drain()
    assert (await table.get(other.id)).status is Status.COMPLETED
    assert not await loop.run_once()  # nothing left
    loop.engine_thread.close()


async def test_an_engine_error_fails_the_batch_and_refunds_it(
    tmp_path: Path, table: InMemoryTaskStore
) -> None:
    task = await table.create(new_task(IDS))
    loop = worker(tmp_path, table, FakeEngine(fail_with=OutOfMemoryError("CUDA out of memory")))
    assert await loop.run_once()
    await loop.drain()
    failed = await table.get(task.id)
    assert (failed.status, failed.error_code) == (Status.FAILED, FailureCode.RESOURCE_EXHAUSTED)
    assert table.balances[IDS[0]] == 10_000_000
    assert not any((tmp_path / "results").rglob("*.png"))
    loop.engine_thread.close()
