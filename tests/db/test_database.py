"""Database.read and Database.write: one transaction per function, on either backend."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection, select, text, update

from darkroom.db.database import LOG_RESTART_FRAMES, Database
from darkroom.db.schema import accounts
from tests.helpers import make_account

# The SQL or the locking under test differs by backend.
pytestmark = pytest.mark.each_database


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


def _scratch(tmp_path: Path, name: str) -> tuple[Database, Path]:
    path = tmp_path / name
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("CREATE TABLE t (n INTEGER)")
    return Database(f"sqlite+aiosqlite:///{path}"), path


def _insert(n: int) -> Callable[[Connection], int]:
    def run(conn: Connection) -> int:
        conn.execute(text("INSERT INTO t (n) VALUES (:n)"), {"n": n})
        count: int = conn.execute(text("SELECT count(*) FROM t")).scalar_one()
        return count

    return run


def _count(conn: Connection) -> int:
    count: int = conn.execute(text("SELECT count(*) FROM t")).scalar_one()
    return count


async def test_quick_units_run_on_the_loop_thread_and_busy_ones_wait_on_the_threads(
    tmp_path: Path,
) -> None:
    """A quick unit runs on the caller's thread; while another process holds SQLite's write
    lock, a quick read still runs there (WAL readers never wait), and a quick write is handed
    to the writing thread, which waits for the lock while the loop goes on serving."""
    db, path = _scratch(tmp_path, "quick.db")
    loop_thread = threading.get_ident()
    try:
        assert await db.read(lambda conn: threading.get_ident(), quick=True) == loop_thread
        assert await db.write(_insert(1), quick=True) == 1
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO t (n) VALUES (2)")
        try:
            threads: list[int] = []

            def insert_noting_thread(conn: Connection) -> int:
                threads.append(threading.get_ident())
                return _insert(3)(conn)

            write = asyncio.create_task(db.write(insert_noting_thread, quick=True))
            await asyncio.sleep(0.3)
            assert not write.done()  # waiting for the lock, on a thread
            assert await db.read(_count, quick=True) == 1  # the loop still reads, at once
        finally:
            holder.execute("COMMIT")
            holder.close()
        assert await write == 3
        # Busy at its BEGIN here, before it ran: it ran once, on the writing thread.
        assert len(threads) == 1 and threads[0] != loop_thread
        assert await db.read(_count, quick=True) == 3
    finally:
        await db.dispose()


async def test_quick_writes_hand_checkpoints_to_a_thread_so_the_log_stays_small(
    tmp_path: Path,
) -> None:
    """The loop's connection never checkpoints by itself, and under writes that never pause a
    passive checkpoint never gets to rewind the log: without the restart the log would hold
    every one of these writes (6,000 pages or more); the bound is twice the restart's threshold."""
    db, path = _scratch(tmp_path, "log.db")
    wal = path.with_name(path.name + "-wal")
    try:
        writes = 3 * LOG_RESTART_FRAMES
        for n in range(writes):
            await db.write(_insert(n), quick=True)
        assert await db.read(_count) == writes
        page_size = await db.read(lambda conn: conn.exec_driver_sql("PRAGMA page_size").scalar())
        frames = (wal.stat().st_size - 32) // (page_size + 24)  # the log's header, each frame's
        assert frames < 2 * LOG_RESTART_FRAMES
    finally:
        await db.dispose()


async def test_units_from_another_thread_use_the_threads(tmp_path: Path) -> None:
    db, _ = _scratch(tmp_path, "other.db")
    try:
        loop_thread = await db.read(lambda conn: threading.get_ident(), quick=True)

        def elsewhere() -> int:
            return asyncio.run(db.read(lambda conn: threading.get_ident(), quick=True))

        other = await asyncio.to_thread(elsewhere)
        assert other != loop_thread
    finally:
        await db.dispose()
