"""What the stores' database calls cost, three ways in one run: as darkroom runs them on SQLite
(a quick unit on the event loop's own connection, any other one function handed to a thread),
with every unit handed to a thread (no quick path), and through aiosqlite, where every
statement crosses to the driver's thread and back.

Prints, per operation, the median wall time and the CPU time of this process (all its threads)
per call, each way, and each way's CPU over darkroom's. With --postgres it runs on a scratch
database made on that server (and dropped after); there every way goes through asyncpg, so the
ratios show the noise.

    python bench/database.py --repeat 300
    python bench/database.py --postgres postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers import add_task

from darkroom.accounts.store import AccountStore
from darkroom.db.database import WRITES, Database
from darkroom.db.migrate import upgrade
from darkroom.tasks.model import Claim
from darkroom.tasks.stats import TaskStats
from darkroom.tasks.store import TaskStore

T = TypeVar("T")


class ThreadsOnly(Database):
    """Every unit handed to the database's threads, quick or not."""

    async def read(self, fn: Callable[[Connection], T], *, quick: bool = False) -> T:
        return await super().read(fn)

    async def write(self, fn: Callable[[Connection], T], *, quick: bool = False) -> T:
        return await super().write(fn)


class PerStatement(Database):
    """The same units of work, each statement awaited through the async engine (aiosqlite)."""

    async def read(self, fn: Callable[[Connection], T], *, quick: bool = False) -> T:
        return await self._through_engine(fn, writes=False)

    async def write(self, fn: Callable[[Connection], T], *, quick: bool = False) -> T:
        return await self._through_engine(fn, writes=True)

    async def _through_engine(self, fn: Callable[[Connection], T], *, writes: bool) -> T:
        async with self.engine.connect() as conn:
            if writes:
                await conn.execution_options(**WRITES)
            async with conn.begin():
                return await conn.run_sync(fn)


async def measure(action: Callable[[], Awaitable[object]], repeat: int) -> tuple[float, float]:
    """Median wall ms and mean CPU ms of this process per call, after a tenth as warm-up."""
    for _ in range(max(1, repeat // 10)):
        await action()
    walls = []
    cpu = time.process_time()
    for _ in range(repeat):
        start = time.perf_counter()
        await action()
        walls.append(time.perf_counter() - start)
    cpu = time.process_time() - cpu
    return 1000 * statistics.median(walls), 1000 * cpu / repeat


async def operations(db: Database, repeat: int, label: str) -> dict[str, tuple[float, float]]:
    accounts = AccountStore(db)
    account = await accounts.create_account(f"bench-{label}", credits_micro=10**15)
    info, key = await accounts.create_key(account.name)
    ids = (account.id, info.id)
    store = TaskStore(db)
    task = await add_task(db, ids)

    async def create_claim_complete() -> None:
        await add_task(db, ids)
        [claimed] = await store.claim("bench", limit=1, lease_s=60, models=["krea-2-turbo"])
        await store.complete(Claim(claimed.id, claimed.attempt), ["k.png"])

    return {
        "authenticate (read)": await measure(lambda: accounts.authenticate(key), repeat),
        "task get (read)": await measure(lambda: store.get(task.id), repeat),
        "queue snapshot (read)": await measure(
            lambda: TaskStats(store.db).model_queue(task.model), repeat
        ),
        "create (write)": await measure(lambda: add_task(db, ids), repeat),
        "create+claim+complete": await measure(create_claim_complete, repeat // 3),
    }


@asynccontextmanager
async def scratch_database(postgres: str | None) -> AsyncIterator[str]:
    """The URL of an empty database: a SQLite file, or a database made on the PostgreSQL server
    that the admin DSN `postgres` names."""
    if postgres is None:
        with tempfile.TemporaryDirectory(prefix="darkroom-bench-") as tmp:
            yield f"sqlite+aiosqlite:///{tmp}/bench.db"
        return
    import asyncpg

    name = f"darkroom_bench_{os.getpid()}"
    admin = await asyncpg.connect(postgres)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            base = postgres.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
            yield f"{base}/{name}"
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument(
        "--postgres", metavar="DSN", help="a PostgreSQL server's admin DSN (default: SQLite)"
    )
    args = parser.parse_args()
    results = {}
    ways = {"darkroom": Database, "threads only": ThreadsOnly, "aiosqlite": PerStatement}
    for name, kind in ways.items():  # each on a database of its own: the same rows each way
        async with scratch_database(args.postgres) as url:
            setup = Database(url)
            await upgrade(setup)
            await setup.dispose()
            db = kind(url)
            try:
                results[name] = await operations(db, args.repeat, name)
            finally:
                await db.dispose()
    print(f"{url.split(':')[0]}, {args.repeat} calls each; ms per call (CPU: all threads)")
    print(f"{'operation':24}" + "".join(f" {name:>24}" for name in ways))
    for op, (_, base_cpu) in results["darkroom"].items():
        cells = []
        for name in ways:
            wall, cpu = results[name][op]
            cells.append(f"{wall:6.3f} cpu {cpu:6.3f} {cpu / base_cpu:4.1f}x")
        print(f"{op:24}" + "".join(f" {cell:>24}" for cell in cells))


if __name__ == "__main__":
    asyncio.run(main())
