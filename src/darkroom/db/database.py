"""Async connections to SQLite or PostgreSQL, configured the same way for every role."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

# The execution option that marks a connection's transactions as writing (see `_on_begin`).
WRITES = {"darkroom_writes": True}


class Database:
    """One async engine plus the per-dialect setup it needs; `transaction()` is the unit of work."""

    def __init__(self, url: str, *, echo: bool = False, foreign_keys: bool = True) -> None:
        parsed = make_url(url)
        self.url = url
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo}
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # Pooled: opening an aiosqlite connection costs a thread and four PRAGMAs, which a
            # worker polling for tasks paid ten times a second. Idle pooled connections hold
            # no lock (every transaction ends), so pooling costs nothing in concurrency.
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine, foreign_keys=foreign_keys)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A connection inside one writing transaction: committed on success, rolled back on
        error. Reads go through `engine.connect()` and, on SQLite, take no write lock."""
        async with self.engine.connect() as conn:
            await conn.execution_options(**WRITES)
            async with conn.begin():
                yield conn

    async def dispose(self) -> None:
        await self.engine.dispose()


def _configure_sqlite(engine: AsyncEngine, *, foreign_keys: bool) -> None:
    sync_engine = engine.sync_engine

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
