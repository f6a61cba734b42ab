"""The table layer under one suite: `tables` is the real stores on SQLite and on PostgreSQL,
and `darkroom.testing`'s in-memory ones, each test running once on each. Time moves by a
FakeClock, never by sleeping."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from darkroom.accounts.store import AccountStore
from darkroom.db.database import Database
from darkroom.db.schema import accounts, callbacks
from darkroom.tasks.model import NewTask
from darkroom.tasks.outbox import Outbox
from darkroom.tasks.retention import TaskRetention
from darkroom.tasks.store import TaskStore
from darkroom.tasks.workers import WorkerRegistry
from darkroom.testing import (
    FakeClock,
    InMemoryOutbox,
    InMemoryTaskStore,
    InMemoryWorkerRegistry,
)
from tests.conftest import _create_pg_database, _drop_pg_database
from tests.helpers import new_task


@dataclass
class Tables:
    """The stores under test (real or in memory: the same methods), their clock, and how to
    fund an account and read back money and callbacks on them."""

    store: Any  # TaskStore | InMemoryTaskStore
    outbox: Any  # Outbox | InMemoryOutbox
    retention: Any  # TaskRetention | InMemoryTaskStore (its sweeps run on its rows)
    workers: Any  # WorkerRegistry | InMemoryWorkerRegistry
    clock: FakeClock
    fund: Callable[[str, int], Awaitable[tuple[int, int]]]  # name, micro -> (account, key)
    balance: Callable[[int], Awaitable[int]]
    callbacks: Callable[[], Awaitable[list[str]]]

    def task(self, ids: tuple[int, int], **fields: Any) -> NewTask:
        """A new task created now on the clock, which then moves 1 ms (distinct, ordered)."""
        new = dataclasses.replace(new_task(ids, **fields), created_at=self.clock.now())
        self.clock.advance(0.001)
        return new


def _memory() -> Tables:
    clock = FakeClock()
    outbox = InMemoryOutbox(clock)
    store = InMemoryTaskStore(clock, outbox=outbox)
    workers = InMemoryWorkerRegistry(clock, store)

    async def fund(name: str, micro: int) -> tuple[int, int]:
        account = len(outbox.names) + 1
        outbox.names[account] = name
        store.balances[account] = micro
        return account, 1000 + account

    async def balance(account: int) -> int:
        return store.balances[account]

    async def queued() -> list[str]:
        return list(store.callbacks_queued)

    return Tables(store, outbox, store, workers, clock, fund, balance, queued)


def _database(db: Database) -> Tables:
    clock = FakeClock()
    accounts_ = AccountStore(db, clock)

    async def fund(name: str, micro: int) -> tuple[int, int]:
        account = await accounts_.create_account(name, credits_micro=micro)
        key, _ = await accounts_.create_key(name)
        return account.id, key.id

    async def balance(account: int) -> int:
        query = select(accounts.c.balance_micro).where(accounts.c.id == account)
        return int(await db.read(lambda conn: conn.execute(query).scalar_one()))

    async def queued() -> list[str]:
        query = select(callbacks.c.task_id).order_by(callbacks.c.id)
        return list(await db.read(lambda conn: conn.execute(query).scalars().all()))

    return Tables(
        TaskStore(db, clock), Outbox(db), TaskRetention(db, clock), WorkerRegistry(db, clock),
        clock, fund, balance, queued,
    )  # fmt: skip


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """None for the fakes; else the URL of a fresh copy of the session's migrated database."""
    if request.param == "memory":
        yield None
    elif request.param == "sqlite":
        path = tmp_path / "darkroom.db"
        path.write_bytes(request.getfixturevalue("sqlite_template").read_bytes())
        yield f"sqlite+aiosqlite:///{path}"
    else:
        admin = request.getfixturevalue("postgres")
        name = asyncio.run(_create_pg_database(admin, request.getfixturevalue("pg_template")))
        base = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        yield f"{base}/{name}"
        asyncio.run(_drop_pg_database(admin, name))


@pytest.fixture
async def tables(backend: str | None) -> AsyncIterator[Tables]:
    if backend is None:
        yield _memory()
        return
    db = Database(backend)
    yield _database(db)
    await db.dispose()
