"""Waking idle workers: a create reaches a waiting worker at once, on both databases.

The waits here are given a minute; a wait that ends within the test's few seconds was woken.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import httpx
import pytest

from darkroom.contract import Status
from darkroom.db.database import Database
from darkroom.db.migrate import upgrade
from darkroom.engine.krea2 import EngineOptions, Krea2Engine
from darkroom.settings import Settings
from darkroom.storage.local import LocalStorage
from darkroom.tasks.store import TaskStore
from darkroom.tasks.wakeup import (
    PipeWakeups,
    PostgresWakeups,
    Sleep,
    WakeupSignal,
    pipe_path,
    wakeups_for,
)
from tests.helpers import add_task, make_account, worker_for

# The SQL or the locking under test differs by backend.
pytestmark = pytest.mark.each_database

LONG = 60.0  # a poll interval no test waits out


async def test_a_created_task_wakes_a_waiting_worker(db: Database) -> None:
    ids = await make_account(db)
    wakeups = wakeups_for(db)
    assert not isinstance(wakeups, Sleep)
    stop = asyncio.Event()
    await wakeups.wait(stop, 0.05)
    waiting = asyncio.create_task(wakeups.wait(stop, LONG))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # really waiting: nothing rang yet
    await add_task(db, ids)
    assert await asyncio.wait_for(waiting, 10)  # woken, and says so
    assert not await wakeups.wait(stop, 0.05)  # a wait that ran out says so too
    await wakeups.close()


async def test_a_rescued_task_wakes_a_waiting_worker(db: Database) -> None:
    ids = await make_account(db)
    await add_task(db, ids)
    store = TaskStore(db)
    assert await store.claim("lost", limit=1, lease_s=0.05, models=["krea-2-turbo"])
    wakeups = wakeups_for(db)
    stop = asyncio.Event()
    await wakeups.wait(stop, 0.05)
    waiting = asyncio.create_task(wakeups.wait(stop, LONG))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    assert (await store.rescue_expired(max_attempts=3)).requeued
    assert await asyncio.wait_for(waiting, 10)
    await wakeups.close()


async def test_a_ring_while_busy_is_kept_for_the_next_wait(db: Database) -> None:
    ids = await make_account(db)
    wakeups = wakeups_for(db)
    stop = asyncio.Event()
    await wakeups.wait(stop, 0.05)
    await add_task(db, ids)  # the worker is generating, not waiting
    await asyncio.sleep(0.2)
    assert await asyncio.wait_for(wakeups.wait(stop, LONG), 5)
    # ...and it is used up: the next wait waits again.
    again = asyncio.create_task(wakeups.wait(stop, LONG))
    await asyncio.sleep(0.3)
    assert not again.done()
    stop.set()
    assert not await asyncio.wait_for(again, 5)  # stop ends a wait too, unwoken
    await wakeups.close()


async def test_ringing_with_nobody_listening_is_harmless(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    await upgrade(db)
    ids = await make_account(db)
    pipe = pipe_path(db)
    assert pipe is not None
    await add_task(db, ids)  # no pipe yet
    assert not pipe.exists()
    wakeups = PipeWakeups(pipe)
    await wakeups.wait(asyncio.Event(), 0.01)  # creates the pipe
    await wakeups.close()
    assert pipe.exists()
    await add_task(db, ids)  # a pipe nobody reads: no error, no blocking
    await db.dispose()


async def test_a_file_in_the_pipes_place_means_polling(tmp_path: Path) -> None:
    blocker = tmp_path / "x.db.wakeup"
    blocker.write_text("not a pipe")
    wakeups = PipeWakeups(blocker)
    await wakeups.wait(asyncio.Event(), 0.01)  # logs and polls instead of raising
    await wakeups.wait(asyncio.Event(), 0.01)
    assert blocker.read_text() == "not a pipe"


async def test_a_created_task_is_claimed_without_waiting_out_the_poll(
    settings: Settings, db: Database, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    settings = settings.model_copy(update={"worker_poll_interval_s": LONG})
    engine = Krea2Engine.load(str(settings.tiny_model_path), ("krea-2-turbo",), EngineOptions())
    worker = worker_for(settings, db, engine, LocalStorage(settings.results_dir), worker_id="w")
    looks: list[bool] = []
    has_pending = worker.store.has_pending

    async def counted(models: Sequence[str]) -> bool:
        looks.append(found := await has_pending(models))
        return found

    worker.store.has_pending = counted  # type: ignore[method-assign]
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        # Started and found nothing: from here it waits a minute unless woken. (A task created
        # before it is inside that wait still wakes it: the pipe keeps the byte, and a new
        # PostgreSQL listener rings once.)
        for _ in range(3000):
            if looks:
                break
            await asyncio.sleep(0.01)
        assert looks == [False]
        response = await client.post(
            "/v1/images/generations",
            json={"model": "krea-2-turbo", "prompt": "a fox", "size": "1:1"},
            headers=auth,
        )
        assert response.status_code == 200, response.text
        task_id = response.json()["id"]
        store = TaskStore(db)
        for _ in range(1500):
            task = await store.get(task_id)
            assert task is not None
            if task.status is Status.COMPLETED:
                break
            await asyncio.sleep(0.02)
        assert task.status is Status.COMPLETED
        # One read at start (nothing), then the wake-up led straight to the claim.
        assert looks == [False]
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)


def test_the_pipe_sits_beside_the_database_file(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'd' / 'x.db'}")
    assert pipe_path(db) == tmp_path / "d" / "x.db.wakeup"
    assert pipe_path(Database("sqlite+aiosqlite:///:memory:")) is None


async def test_a_dropped_listener_listens_again(postgres: str) -> None:
    """The server ends the worker's LISTEN connection (a restart, an idle-connection killer):
    the worker polls meanwhile, listens again, and the next create wakes it."""
    db = Database(postgres.replace("postgresql://", "postgresql+asyncpg://"))
    wakeups = PostgresWakeups(db)
    stop = asyncio.Event()
    await wakeups.wait(stop, 0.05)
    listener = wakeups._conn
    assert listener is not None
    admin = await asyncpg.connect(postgres)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", listener.get_server_pid())
    finally:
        await admin.close()
    for _ in range(50):
        if listener.is_closed():
            break
        await asyncio.sleep(0.1)
    assert listener.is_closed()
    await wakeups.wait(stop, 0.05)  # notices, listens on a new connection
    assert wakeups._conn is not None and wakeups._conn is not listener
    waiting = asyncio.create_task(wakeups.wait(stop, LONG))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await db.write(WakeupSignal(db).send_in_transaction)  # what a create does on PostgreSQL
    await asyncio.wait_for(waiting, 10)
    await wakeups.close()
    await db.dispose()


def test_the_listener_keeps_connection_parameters_only() -> None:
    db = Database(
        "postgresql+asyncpg://u:p%40ss@db.example:5433/dr?ssl=require&prepared_statement_cache_size=0"
    )
    wakeups = PostgresWakeups(db)
    assert wakeups.dsn == "postgresql://u:p%40ss@db.example:5433/dr"
    assert wakeups.ssl == "require"
