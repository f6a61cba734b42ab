"""Bring a database's schema to the newest Alembic revision, or tell whether it is there."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from darkroom.db.database import WRITES, Database

_INI = Path(__file__).with_name("alembic.ini")


def _config(connection: Connection) -> Config:
    config = Config(str(_INI))
    config.attributes["connection"] = connection
    return config


async def upgrade(db: Database, revision: str = "head") -> None:
    """Apply every migration up to `revision`."""
    if db.dialect == "sqlite":
        unchecked = Database(db.url, foreign_keys=False)
        try:
            await _upgrade(unchecked, revision)
            async with unchecked.engine.connect() as conn:
                broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all()
            if broken:
                raise RuntimeError(f"migration left rows with broken references: {broken[:5]}")
        finally:
            await unchecked.dispose()
    else:
        await _upgrade(db, revision)


async def _upgrade(db: Database, revision: str) -> None:
    async with db.engine.connect() as conn:
        await conn.execution_options(**WRITES)
        if db.dialect == "postgresql":
            # Several replicas may start at once: one migrates, the others wait for it.
            await conn.exec_driver_sql("SELECT pg_advisory_lock(72710001)")
        try:
            await conn.run_sync(lambda sync: command.upgrade(_config(sync), revision))
            await conn.commit()
        finally:
            if db.dialect == "postgresql":
                await conn.exec_driver_sql("SELECT pg_advisory_unlock(72710001)")
                await conn.commit()


async def current_revision(db: Database) -> str | None:
    async with db.engine.connect() as conn:
        return await conn.run_sync(_read_revision)


def _read_revision(sync: Connection) -> str | None:
    with _quiet_context_setup():
        return MigrationContext.configure(sync).get_current_revision()


@contextmanager
def _quiet_context_setup() -> Iterator[None]:
    """Alembic logs its dialect setup at INFO ("Context impl SQLiteImpl.") whenever a context is
    made; reading the revision at every service's start is not news. Applied migrations still
    log their steps (`upgrade` does not pass through here)."""
    logger = logging.getLogger("alembic.runtime.migration")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def head_revision() -> str | None:
    return ScriptDirectory(str(_INI.parent / "migrations")).get_current_head()


def serves(current: str | None, head: str | None) -> bool:
    """Whether code whose newest migration is `head` runs on a schema at `current`: at it, or
    past it. Migrations are written expand-then-contract (docs/architecture.md, "Releases"), so
    the code of the release before runs on a schema one release ahead, and a migration does not
    take every older process out of service. Past means a revision this code does not know
    whose number is higher: revision ids are zero-padded numbers (`0010`)."""
    if current == head:
        return True
    if current is None or head is None or not (current.isdigit() and head.isdigit()):
        return False
    known = ScriptDirectory(str(_INI.parent / "migrations")).get_revision
    try:
        known(current)
    except Exception:  # not one of this code's revisions: a newer release's, if numbered higher
        return int(current) > int(head)
    return False  # one of this code's, and not its newest: behind


async def ensure_current(db: Database) -> None:
    """Refuse to run against a schema behind this code's newest revision."""
    current, head = await current_revision(db), head_revision()
    if not serves(current, head):
        raise RuntimeError(
            f"database schema is at {current or 'nothing'}, this darkroom needs {head}: "
            "run `darkroom migrate` first"
        )
