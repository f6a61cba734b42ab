"""Connections to SQLite or PostgreSQL, configured the same way for every role.

The stores hand each unit of work to `Database.read` or `Database.write` as one plain function
of a synchronous `Connection`. On PostgreSQL it runs through asyncpg (`AsyncConnection.run_sync`).
On SQLite the whole function runs on a thread of this database's own, through the standard
`sqlite3` module: one hand-off per transaction. Through aiosqlite every statement crossed to the
driver's thread and back four times (cursor, execute, fetch, close; plus BEGIN and the pool's
rollback), so that a one-row read cost ~1.3 ms where SQLite itself takes ~0.1 ms
(`bench/database.py` measures both).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

# The execution option that marks a connection's transactions as writing (see `_on_begin`).
WRITES = {"darkroom_writes": True}
# SQLite threads per process. Reads never wait in WAL mode; one writer at a time is all SQLite
# allows, so a second writing thread would only wait in SQLite's busy handler, which sleeps in
# steps of milliseconds, where a queue here hands over at once.
SQLITE_READ_THREADS = 4
SQLITE_WRITE_THREADS = 1

T = TypeVar("T")


class Database:
    """The engines of one database and the per-dialect setup they need. `read` and `write` run the
    stores' units of work; `engine` and `transaction()` serve migrations and tests."""

    def __init__(self, url: str, *, echo: bool = False, foreign_keys: bool = True) -> None:
        parsed = make_url(url)
        self.url = url
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo}
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # The async engine (aiosqlite) serves migrations and `transaction()`; the stores'
            # work runs on `_SqliteThreads`. Both pool their connections: opening one costs
            # four PRAGMAs (and, through aiosqlite, a thread), and idle pooled connections hold
            # no lock (every transaction ends), so pooling costs nothing in concurrency.
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        # SQLite files only: an in-memory database is private to one connection's engine.
        self._sqlite: _SqliteThreads | None = None
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine.sync_engine, foreign_keys=foreign_keys)
            if parsed.database and parsed.database != ":memory:":
                self._sqlite = _SqliteThreads(parsed.set(drivername="sqlite"), foreign_keys)

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """`fn`'s result, run in one reading transaction (on SQLite it takes no write lock)."""
        return await self._run(fn, writes=False)

    async def write(self, fn: Callable[[Connection], T]) -> T:
        """`fn`'s result, run in one writing transaction: committed if it returns, rolled back
        if it raises. On SQLite a cancelled caller does not stop it; on PostgreSQL it is rolled
        back. Either way it happens whole or not at all."""
        return await self._run(fn, writes=True)

    async def _run(self, fn: Callable[[Connection], T], *, writes: bool) -> T:
        if self._sqlite is not None:
            return await self._sqlite.run(fn, writes=writes)
        async with self.engine.connect() as conn:
            if writes:
                await conn.execution_options(**WRITES)
            async with conn.begin():
                return await conn.run_sync(fn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """An async connection inside one writing transaction, committed on success and rolled
        back on error: for migrations and ad-hoc statements (tests). The stores use `write`."""
        async with self.engine.connect() as conn:
            await conn.execution_options(**WRITES)
            async with conn.begin():
                yield conn

    async def dispose(self) -> None:
        if self._sqlite is not None:
            await asyncio.to_thread(self._sqlite.close)
        await self.engine.dispose()


class _SqliteThreads:
    """A synchronous engine on a SQLite file and the threads that run its transactions."""

    def __init__(self, url: Any, foreign_keys: bool) -> None:
        # Connections move between this database's threads, one thread at a time.
        self.engine: Engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=SQLITE_READ_THREADS + SQLITE_WRITE_THREADS,
            max_overflow=0,
        )
        _configure_sqlite(self.engine, foreign_keys=foreign_keys)
        self.readers = ThreadPoolExecutor(SQLITE_READ_THREADS, thread_name_prefix="darkroom-db")
        self.writers = ThreadPoolExecutor(SQLITE_WRITE_THREADS, thread_name_prefix="darkroom-dbw")

    async def run(self, fn: Callable[[Connection], T], *, writes: bool) -> T:
        loop = asyncio.get_running_loop()
        threads = self.writers if writes else self.readers
        return await loop.run_in_executor(threads, self._transaction, fn, writes)

    def _transaction(self, fn: Callable[[Connection], T], writes: bool) -> T:
        with self.engine.connect() as conn:
            if writes:
                conn.execution_options(**WRITES)
            with conn.begin():
                return fn(conn)

    def close(self) -> None:
        self.readers.shutdown()
        self.writers.shutdown()
        self.engine.dispose()


def _configure_sqlite(sync_engine: Engine, *, foreign_keys: bool) -> None:
    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from the driver so BEGIN IMMEDIATE below is ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # Off only for migrations: SQLite alters a table by copying it, dropping the original
        # and renaming the copy, which a referenced table cannot survive with checks on.
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A deferred transaction that reads then writes can fail at once with SQLITE_BUSY when
        # another process writes first; taking the write lock up front makes busy_timeout apply.
        # Reads stay deferred: in WAL mode they neither wait for the writer nor block it, so a
        # client's polls never queue behind a worker's progress write.
        writes = conn.get_execution_options().get("darkroom_writes", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")
