"""A result store that refuses writes costs no attempt and stops claims until it takes one."""

from __future__ import annotations

from pathlib import Path

import pytest

from darkroom.contract import Status
from darkroom.db.database import Database
from darkroom.settings import Settings
from darkroom.storage.local import LocalStorage, StagedFile
from darkroom.tasks.store import TaskStore
from darkroom.testing import FakeEngine
from darkroom.worker.storage_gate import StorageGate
from tests.helpers import add_task, make_account, worker_for


class FullDisk(LocalStorage):
    """The results folder, while `full` is set refusing every write as a full disk does."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.full = False
        self.refused = 0

    def stage(self, key: str, data: bytes) -> StagedFile:
        if self.full:
            self.refused += 1
            raise OSError(28, "No space left on device")
        return super().stage(key, data)


async def test_a_full_disk_releases_the_batch_and_stops_claims_until_it_takes_a_write(
    settings: Settings, db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(StorageGate, "FIRST_S", 0.0)  # probe at once: no waiting in a test
    ready_file = tmp_path / "ready"
    settings = settings.model_copy(update={"worker_batch_size": 2, "worker_ready_file": ready_file})
    ids = await make_account(db)
    tasks = [await add_task(db, ids, seed=seed, prompt=f"p{seed}") for seed in (1, 2, 3)]
    storage = FullDisk(settings.results_dir)
    engine = FakeEngine()
    worker = worker_for(settings, db, engine, storage, worker_id="w")
    worker.ready.mark()
    store = TaskStore(db)

    storage.full = True
    assert await worker.run_once()
    await worker.drain()
    # The batch's two tasks are back in the queue with their attempt given back, at once.
    for task in tasks[:2]:
        back = await store.get(task.id)
        assert back is not None and (back.status, back.attempt) == (Status.PENDING, 0), back
    assert not worker.storage_gate.is_open and not ready_file.exists()
    # While the store refuses the probe, nothing is claimed or generated.
    assert not await worker.run_once()
    assert len(engine.batches) == 1

    storage.full = False
    while await worker.run_once():
        pass
    await worker.drain()
    assert worker.storage_gate.is_open and ready_file.exists()
    for task in tasks:
        done = await store.get(task.id)
        assert done is not None and done.status is Status.COMPLETED and done.attempt == 1, done
        assert storage.exists(done.result_keys[0])
