"""Workers the server knows: rows written at start, refreshed, live within a lease, listed."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from darkroom.clock import utcnow
from darkroom.contract import Status
from darkroom.db.database import Database
from darkroom.db.schema import workers
from darkroom.settings import Settings
from darkroom.storage.local import LocalStorage
from darkroom.tasks.store import TaskStore
from darkroom.tasks.workers import WorkerRegistry
from darkroom.testing import FakeEngine
from tests.e2e.procs import cli, service_env
from tests.helpers import add_task, make_account, worker_for

# The SQL or the locking under test differs by backend.
pytestmark = pytest.mark.each_database


async def _age(db: Database, worker_id: str, seconds: float) -> None:
    async with db.transaction() as conn:
        await conn.execute(
            update(workers)
            .where(workers.c.id == worker_id)
            .values(last_seen_at=utcnow() - timedelta(seconds=seconds))
        )


async def test_a_worker_is_live_within_a_lease_and_models_without_one_are_named(
    db: Database,
) -> None:
    registry = WorkerRegistry(db)
    await registry.register("w1", device="cuda:0", model="krea-2-turbo")
    ids = await make_account(db)
    await add_task(db, ids)
    await add_task(db, ids, model="other-model")
    [one] = await registry.live(lease_s=60)
    assert (one.id, one.device, one.model, one.state) == ("w1", "cuda:0", "krea-2-turbo", "idle")
    assert await registry.models_without_workers(lease_s=60) == {"other-model": 1}

    await registry.refresh("w1", current_tasks=["task-a"], images_done=3)
    [busy] = await registry.live(lease_s=60)
    assert (busy.state, busy.current_tasks, busy.images_done) == ("busy", ("task-a",), 3)

    await _age(db, "w1", 120)  # killed without a word: its row goes stale
    assert await registry.live(lease_s=60) == []
    assert await registry.models_without_workers(lease_s=60) == {
        "krea-2-turbo": 1,
        "other-model": 1,
    }
    assert await registry.forget_stopped_before(utcnow() - timedelta(seconds=60)) == 1
    assert await registry.all() == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_running_worker_keeps_its_row_and_says_when_it_stops(
    settings: Settings, db: Database
) -> None:
    own = Database(settings.resolved_database_url)  # the worker disposes its own at the end
    worker = worker_for(
        settings, own, FakeEngine(), LocalStorage(settings.results_dir), worker_id="w"
    )
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    registry = WorkerRegistry(db)
    task = await add_task(db, await make_account(db))
    for _ in range(200):
        done = await TaskStore(db).get(task.id)
        rows = await registry.all()
        if done and done.status is Status.COMPLETED and rows and rows[0].images_done == 1:
            break
        await asyncio.sleep(0.05)
    [row] = await registry.live(lease_s=settings.lease_s)
    assert (row.id, row.model, row.state, row.images_done) == ("w", "krea-2-turbo", "idle", 1)
    stop.set()
    await asyncio.wait_for(running, 30)
    [gone] = await registry.all()
    assert gone.state == "stopped"
    assert await registry.live(lease_s=settings.lease_s) == []


async def test_metrics_export_live_workers_and_unserved_queues(
    client: httpx.AsyncClient, db: Database, auth: dict[str, str]
) -> None:
    created = await client.post(
        "/v1/images/generations", json={"model": "krea-2-turbo", "prompt": "p"}, headers=auth
    )
    assert created.status_code == 200
    text = (await client.get("/metrics")).text
    assert 'darkroom_pending_without_worker{model="krea-2-turbo"} 1.0' in text
    await WorkerRegistry(db).register("w9", device="cuda:0", model="krea-2-turbo")
    text = (await client.get("/metrics")).text
    assert 'darkroom_workers{model="krea-2-turbo",state="idle"} 1.0' in text
    assert 'darkroom_pending_without_worker{model="krea-2-turbo"} 0.0' in text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.process
def test_darkroom_workers_lists_live_ones_and_all_on_request(
    tmp_path: Path, database_url: str
) -> None:
    env = service_env(tmp_path / "data", database_url, tmp_path / "tiny")
    cli(env, "migrate")

    async def two(db: Database) -> None:
        registry = WorkerRegistry(db)
        await registry.register("gpu-box:41:live", device="cuda:0", model="krea-2-turbo")
        await registry.register("gpu-box:7:gone", device="cuda:1", model="krea-2-turbo")
        await _age(db, "gpu-box:7:gone", 3600)

    from tests.conftest import on_database

    on_database(database_url, two)
    live = cli(env, "workers").stdout
    assert "gpu-box:41:live" in live and "gpu-box:7:gone" not in live
    everyone = cli(env, "workers", "--all").stdout
    assert "gpu-box:7:gone" in everyone and "(gone)" in everyone
