"""Waking idle workers when a task is queued, so its wait is not a poll interval.

The task table is the queue and workers poll it; a wake-up only cuts the wait short. Wherever a
task becomes pending, the task store wakes them: on PostgreSQL with `NOTIFY darkroom_tasks` in
the same transaction (delivered at commit to every listening worker, on any host); on SQLite (one
host by nature) by writing a byte, after the commit, to a named pipe beside the database file. Both are hints: a lost one
(no worker listening, a dropped connection, a full pipe) costs one poll interval, never a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import time
from pathlib import Path
from typing import Any, Protocol

import structlog
from sqlalchemy import Connection
from sqlalchemy.engine import make_url

from darkroom.db.database import Database

log = structlog.get_logger("darkroom.wakeup")

CHANNEL = "darkroom_tasks"
# How long a worker whose PostgreSQL listener failed waits before trying to listen again.
RELISTEN_S = 5.0


def pipe_path(db: Database) -> Path | None:
    """The wake-up pipe of a SQLite database file: beside it, shared by every process using it."""
    if db.dialect != "sqlite" or not hasattr(os, "mkfifo"):
        return None
    database = make_url(db.url).database
    if not database or database == ":memory:":
        return None
    return Path(database).with_name(Path(database).name + ".wakeup")


async def _first(events: list[asyncio.Event], seconds: float) -> None:
    """Return when any event is set or `seconds` have passed."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class WakeupSignal:
    """Tells idle workers that tasks were just queued. `TaskStore` sends it wherever a task
    becomes pending (create, a lease rescued, a claim released), in two halves around the commit:
    a worker woken before the row is visible would find nothing and sleep a poll interval."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.pipe = pipe_path(db)

    def send_in_transaction(self, conn: Connection) -> None:
        """Inside the transaction that queued them: PostgreSQL delivers a NOTIFY at commit."""
        if self.db.dialect == "postgresql":
            conn.exec_driver_sql(f"NOTIFY {CHANNEL}")

    def send_after_commit(self) -> None:
        """After it committed: the SQLite pipe. Never raises; a lost wake-up costs a poll."""
        if self.pipe is None:
            return
        try:
            _write_byte(self.pipe)
        except OSError:
            log.debug("wake-up not sent", exc_info=True)


def _write_byte(pipe: Path) -> None:
    try:
        fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        # No pipe yet, or no worker has it open: nobody is waiting to be woken.
        if exc.errno in (errno.ENOENT, errno.ENXIO):
            return
        raise
    try:
        os.write(fd, b"\0")
    except BlockingIOError:
        pass  # full of unread wake-ups: the workers have plenty to look at already
    finally:
        os.close(fd)


class Wakeups(Protocol):
    """The worker's side: wait until woken, `stop` is set, or `seconds` pass; True if woken."""

    async def wait(self, stop: asyncio.Event, seconds: float) -> bool: ...

    async def close(self) -> None: ...


class Sleep:
    """No wake-ups: the poll interval alone."""

    async def wait(self, stop: asyncio.Event, seconds: float) -> bool:
        await _first([stop], seconds)
        return False

    async def close(self) -> None:
        return None


class PipeWakeups:
    """Reads the SQLite database's wake-up pipe, creating it if it is missing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._rung = asyncio.Event()
        self._broken = False

    def _open(self) -> int:
        if self._fd is None:
            with contextlib.suppress(FileExistsError):
                os.mkfifo(self.path, 0o600)
            if not stat.S_ISFIFO(self.path.stat().st_mode):
                raise OSError(f"{self.path} exists and is not a pipe")
            # Read and write: a pipe whose last writer closed reads as end-of-file forever, which
            # would wake this worker continuously; holding a write end itself prevents that.
            self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        return self._fd

    def _drain(self, fd: int) -> bool:
        got = False
        while True:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                return got
            if not chunk:
                return got
            got = True

    async def wait(self, stop: asyncio.Event, seconds: float) -> bool:
        try:
            fd = None if self._broken else self._open()
        except OSError as exc:
            self._broken = True
            log.warning("no wake-up pipe; polling only", path=str(self.path), error=str(exc))
            fd = None
        if fd is None:
            await _first([stop], seconds)
            return False
        if self._drain(fd):
            return True  # woken while busy: look at the queue now
        loop = asyncio.get_running_loop()
        self._rung.clear()
        # Registered only while waiting: an unread byte during a generation must not spin the loop.
        loop.add_reader(fd, self._rung.set)
        try:
            await _first([self._rung, stop], seconds)
        finally:
            loop.remove_reader(fd)
        return self._drain(fd)

    async def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class PostgresWakeups:
    """LISTENs on its own connection; if that fails or drops, polls and tries again later."""

    def __init__(self, db: Database) -> None:
        url = make_url(db.url)
        # Connection parameters only: the URL's query holds SQLAlchemy's driver options, which
        # asyncpg would send to the server as settings; `ssl` is the one a listener needs too.
        self.dsn = url.set(drivername="postgresql", query={}).render_as_string(False)
        self.ssl = url.query.get("ssl")
        self._conn: Any = None
        self._rung = asyncio.Event()
        self._next_try = 0.0

    async def _listen(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            return
        if time.monotonic() < self._next_try:
            return
        import asyncpg

        try:
            conn = await asyncpg.connect(self.dsn, timeout=5, ssl=self.ssl)
            await conn.add_listener(CHANNEL, self._on_notify)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            self._next_try = time.monotonic() + RELISTEN_S
            log.warning("cannot listen for new tasks; polling only", error=str(exc))
            return
        self._conn = conn
        self._rung.set()  # anything queued while this worker was not listening

    def _on_notify(self, *_args: object) -> None:
        self._rung.set()

    async def wait(self, stop: asyncio.Event, seconds: float) -> bool:
        await self._listen()
        if not self._rung.is_set():
            await _first([self._rung, stop], seconds)
        rung = self._rung.is_set()
        self._rung.clear()
        return rung

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None


def wakeups_for(db: Database) -> Wakeups:
    if db.dialect == "postgresql":
        return PostgresWakeups(db)
    pipe = pipe_path(db)
    return PipeWakeups(pipe) if pipe is not None else Sleep()
