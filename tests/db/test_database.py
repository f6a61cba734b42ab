"""Database.read and Database.write: one transaction per function, on either backend."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import Connection, select, update

from darkroom.db.database import Database
from darkroom.db.schema import accounts
from tests.helpers import make_account


def _balance(conn: Connection, account_id: int) -> int:
    value: int = conn.execute(
        select(accounts.c.balance_micro).where(accounts.c.id == account_id)
    ).scalar_one()
    return value


async def test_a_write_commits_what_its_function_did(db: Database) -> None:
    account_id, _ = await make_account(db)

    def add_one(conn: Connection) -> int:
        conn.execute(
            update(accounts)
            .where(accounts.c.id == account_id)
            .values(balance_micro=accounts.c.balance_micro + 1)
        )
        return _balance(conn, account_id)

    after = await db.write(add_one)
    assert await db.read(lambda conn: _balance(conn, account_id)) == after


async def test_a_write_whose_function_raises_changes_nothing(db: Database) -> None:
    account_id, _ = await make_account(db)
    before = await db.read(lambda conn: _balance(conn, account_id))

    def half_done(conn: Connection) -> None:
        conn.execute(update(accounts).values(balance_micro=0))
        raise RuntimeError("stopped half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        await db.write(half_done)
    assert await db.read(lambda conn: _balance(conn, account_id)) == before


async def test_sqlite_runs_each_transaction_on_its_own_threads(tmp_path: Path) -> None:
    """One hand-off per transaction: the whole function runs on a thread of the database's,
    reads on the reading threads and writes on the one writing thread, never on the loop."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/threads.db")
    try:
        loop_thread = threading.current_thread().name
        reader = await db.read(lambda conn: threading.current_thread().name)
        writer = await db.write(lambda conn: threading.current_thread().name)
        assert reader != loop_thread and reader.startswith("darkroom-db_")
        assert writer.startswith("darkroom-dbw_")
    finally:
        await db.dispose()


async def test_sqlite_writes_from_many_callers_all_land(tmp_path: Path) -> None:
    """Concurrent writes queue on the writing thread instead of failing on SQLite's lock."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/many.db")
    try:
        await db.write(
            lambda conn: conn.exec_driver_sql("CREATE TABLE counter (n INTEGER NOT NULL)")
        )

        def insert_one(conn: Connection) -> None:
            conn.exec_driver_sql("INSERT INTO counter (n) VALUES (1)")

        await asyncio.gather(*(db.write(insert_one) for _ in range(50)))
        total = await db.read(
            lambda conn: conn.exec_driver_sql("SELECT count(*) FROM counter").scalar_one()
        )
        assert total == 50
    finally:
        await db.dispose()


async def test_a_sqlite_write_whose_caller_is_cancelled_still_happens_whole(
    tmp_path: Path,
) -> None:
    """Documented on Database.write: once handed over, a SQLite transaction runs to its end."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/cancel.db")
    started, release = threading.Event(), threading.Event()
    try:
        await db.write(lambda conn: conn.exec_driver_sql("CREATE TABLE t (n INTEGER)"))

        def slow_insert(conn: Connection) -> None:
            conn.exec_driver_sql("INSERT INTO t (n) VALUES (1)")
            started.set()
            release.wait(10)
            conn.exec_driver_sql("INSERT INTO t (n) VALUES (2)")

        writing = asyncio.create_task(db.write(slow_insert))
        await asyncio.to_thread(started.wait, 10)
        writing.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await writing
        # The cancelled caller returns at once; the transaction ends later on the writing
        # thread, so look from that thread: this write queues behind it.
        rows = await db.write(lambda conn: conn.exec_driver_sql("SELECT n FROM t").scalars().all())
        assert sorted(rows) == [1, 2]
    finally:
        await db.dispose()
