"""Connections to SQLite or PostgreSQL, configured the same way for every role.

The stores hand each unit of work to `Database.read` or `Database.write` as one plain function
of a synchronous `Connection`. On PostgreSQL it runs through asyncpg (`AsyncConnection.run_sync`).
On SQLite the whole function runs on a thread of this database's own, through the standard
`sqlite3` module: one hand-off per transaction. Through aiosqlite every statement crossed to the
driver's thread and back four times (cursor, execute, fetch, close; plus BEGIN and the pool's
rollback), so that a one-row read cost ~1.3 ms where SQLite itself takes ~0.1 ms
(`bench/database.py` measures both).

A hand-off to a thread still costs more than a short unit of work itself (on a 2-core machine,
~0.4 ms of CPU against ~0.15 ms for a poll's one-row read). Units marked `quick` (a few rows
through an index: a poll's read, a create) therefore run on the calling event loop's thread, on a
connection of their own that never waits: its busy timeout is 0, and whenever SQLite answers
"busy" (another process holds the write lock, or the log is being reset) the unit is rolled back
and handed to the threads like any other, which wait as long as they must. That connection never
checkpoints the log itself (a checkpoint writes and syncs pages, which the loop must not wait
for); every `CHECKPOINT_EVERY` quick writes, a passive checkpoint is handed to the writing thread.
A passive checkpoint copies what the log holds but lets writes go on meanwhile, and SQLite only
rewinds the log once a checkpoint has copied all of it: under steady writes it never has, and
the log grew by every write (20 MB after 5,000 one-row inserts). Once the log passes
`LOG_RESTART_FRAMES`, the writing thread therefore restarts it (a checkpoint that holds new
writers back for as long as it copies, at most `RESTART_WAIT_MS` for readers; the loop's writes
meanwhile go to the threads as for any other "busy").
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

# The execution option that marks a connection's transactions as writing (see `_on_begin`).
WRITES = {"darkroom_writes": True}
# SQLite threads per process. Reads never wait in WAL mode; one writer at a time is all SQLite
# allows, so a second writing thread would only wait in SQLite's busy handler, which sleeps in
# steps of milliseconds, where a queue here hands over at once.
SQLITE_READ_THREADS = 4
SQLITE_WRITE_THREADS = 1
# Quick writes between passive checkpoints handed to the writing thread: a create writes ~8
# pages, so this keeps the log near SQLite's own default of 1,000 pages between checkpoints.
CHECKPOINT_EVERY = 100
# Pages in the log past which the checkpoint restarts it (twice SQLite's default between
# checkpoints: ~8 MB at 4 KiB pages), and how long that restart waits for readers to move on.
LOG_RESTART_FRAMES = 2000
RESTART_WAIT_MS = 1000
# How long the threads' connections wait for another connection's lock.
BUSY_TIMEOUT_MS = 30000
# SQLite's primary result codes for "another connection holds the lock".
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6

log = structlog.get_logger("darkroom.db")

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

    async def read(self, fn: Callable[[Connection], T], *, quick: bool = False) -> T:
        """`fn`'s result, run in one reading transaction (on SQLite it takes no write lock).
        `quick`: `fn` reads a few rows through an index (see the module's notes)."""
        return await self._run(fn, writes=False, quick=quick)

    async def write(self, fn: Callable[[Connection], T], *, quick: bool = False) -> T:
        """`fn`'s result, run in one writing transaction: committed if it returns, rolled back
        if it raises. On SQLite a cancelled caller does not stop it; on PostgreSQL it is rolled
        back. Either way it happens whole or not at all. `quick`: `fn` touches a few rows
        through an index, and may run twice if SQLite is busy the first time (rolled back in
        between), so it must do nothing but its statements."""
        return await self._run(fn, writes=True, quick=quick)

    async def _run(self, fn: Callable[[Connection], T], *, writes: bool, quick: bool) -> T:
        if self._sqlite is not None:
            if quick:
                done, result = self._sqlite.run_here(fn, writes=writes)
                if done:
                    return result  # type: ignore[return-value]
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
            # and one more: the event loop's own (`run_here`)
            pool_size=SQLITE_READ_THREADS + SQLITE_WRITE_THREADS + 1,
            max_overflow=0,
        )
        _configure_sqlite(self.engine, foreign_keys=foreign_keys)
        self.readers = ThreadPoolExecutor(SQLITE_READ_THREADS, thread_name_prefix="darkroom-db")
        self.writers = ThreadPoolExecutor(SQLITE_WRITE_THREADS, thread_name_prefix="darkroom-dbw")
        self._here: Connection | None = None
        self._here_thread: int | None = None
        self._writes_since_checkpoint = 0

    def run_here(self, fn: Callable[[Connection], T], *, writes: bool) -> tuple[bool, T | None]:
        """(True, `fn`'s result) run on this thread without waiting; (False, None) if SQLite was
        busy (nothing done: the caller hands `fn` to the threads). Other errors propagate."""
        conn = self._here_connection()
        if conn is None:
            return False, None
        conn.execution_options(darkroom_writes=writes)
        try:
            with conn.begin():
                result = fn(conn)
        except OperationalError as exc:
            if not _is_busy(exc):
                raise
            self._drop_here()  # whatever state BEGIN left it in, start the next one afresh
            return False, None
        if writes:
            self._writes_since_checkpoint += 1
            if self._writes_since_checkpoint >= CHECKPOINT_EVERY:
                self._writes_since_checkpoint = 0
                self.writers.submit(self._checkpoint)
        return True, result

    def _here_connection(self) -> Connection | None:
        """This thread's connection that never waits; None on any thread but the first to ask
        (the event loop's: another thread's units go to the threads)."""
        thread = threading.get_ident()
        if self._here_thread is None:
            self._here_thread = thread
        if thread != self._here_thread:
            return None
        if self._here is None:
            conn = self.engine.connect()
            driver = conn.connection.driver_connection
            assert driver is not None
            driver.execute("PRAGMA busy_timeout=0")
            driver.execute("PRAGMA wal_autocheckpoint=0")
            self._here = conn
        return self._here

    def _drop_here(self) -> None:
        if self._here is not None:
            self._here.invalidate()  # closed, not returned: its settings are not the pool's
            self._here.close()
            self._here = None

    def _checkpoint(self) -> None:
        """A passive checkpoint (it waits for no one): the log the quick writes grew goes into
        the database file, on a writing thread. If writes meanwhile kept the log from being
        rewound and it has grown past `LOG_RESTART_FRAMES`, a restarting checkpoint follows."""
        try:
            raw = self.engine.raw_connection()
            try:
                driver = raw.driver_connection
                assert driver is not None
                _, frames, _ = driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if frames > LOG_RESTART_FRAMES:
                    driver.execute(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")
                    try:
                        driver.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                    finally:
                        driver.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            finally:
                raw.close()
        except Exception:
            log.warning("checkpoint failed; the next one will retry", exc_info=True)

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
        self._drop_here()
        self.readers.shutdown()
        self.writers.shutdown()
        self.engine.dispose()


def _is_busy(exc: OperationalError) -> bool:
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return (
        isinstance(exc.orig, sqlite3.OperationalError)
        and code is not None
        and (code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED))
    )


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
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A deferred transaction that reads then writes can fail at once with SQLITE_BUSY when
        # another process writes first; taking the write lock up front makes busy_timeout apply.
        # Reads stay deferred: in WAL mode they neither wait for the writer nor block it, so a
        # client's polls never queue behind a worker's progress write.
        writes = conn.get_execution_options().get("darkroom_writes", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")
