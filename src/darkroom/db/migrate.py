"""Bring a database's schema to the newest Alembic revision, or tell whether it is there.

A schema already at the newest revision is told so by one read of `alembic_version` and the
migrations' file names, without importing Alembic: every `darkroom` command and service start
migrates or checks first, and importing Alembic and loading its migration scripts was a fifth
of such a start (`python -X importtime -m darkroom accounts list` lists what one imports).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text

from darkroom.db.database import WRITES, Database

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

_INI = Path(__file__).with_name("alembic.ini")
_VERSIONS = _INI.parent / "migrations" / "versions"


def _config(connection: Connection) -> Config:
    from alembic.config import Config

    config = Config(str(_INI))
    config.attributes["connection"] = connection
    return config


async def upgrade(db: Database, revision: str = "head") -> None:
    """Apply every migration up to `revision`."""
    if revision == "head" and await current_revision(db) == head_revision():
        return  # the usual case: nothing to apply, and no Alembic to import to learn it
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
    from alembic import command

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
    """The schema's revision: one read of `alembic_version` (None before the first migration)."""
    async with db.engine.connect() as conn:
        return await conn.run_sync(_read_revision)


def _read_revision(sync: Connection) -> str | None:
    if not inspect(sync).has_table("alembic_version"):
        return None
    revision: str | None = sync.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return revision


def head_revision() -> str | None:
    """This code's newest revision, as the migrations' file names number it (`0012_....py` holds
    revision `0012`; tests/db/test_migrations.py checks it is Alembic's head)."""
    numbers = [p.name.split("_", 1)[0] for p in _VERSIONS.glob("[0-9][0-9][0-9][0-9]_*.py")]
    return max(numbers, default=None)


def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(_INI.parent / "migrations"))


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
    known = _scripts().get_revision
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
