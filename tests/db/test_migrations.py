"""Migrations build exactly the schema the code declares, and carry old rows forward."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, select, text

from darkroom.db.database import WRITES, Database
from darkroom.db.migrate import _config, ensure_current, upgrade
from darkroom.db.schema import accounts, metadata, tasks

# The SQL or the locking under test differs by backend.
pytestmark = pytest.mark.each_database


def _diff(sync: Connection) -> list[Any]:
    context = MigrationContext.configure(sync, opts={"compare_type": False})
    return list(compare_metadata(context, metadata))


async def test_migrations_match_the_declared_schema(database_url: str) -> None:
    db = Database(database_url)
    try:
        await upgrade(db)
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await db.dispose()


async def test_credits_migration_keeps_existing_tasks(database_url: str) -> None:
    db = Database(database_url)
    try:
        await upgrade(db, "0002")
        async with db.transaction() as conn:
            await conn.execute(
                text(
                    "INSERT INTO accounts (name, user_group, created_at)"
                    " VALUES ('old', 'default', '2026-01-01 00:00:00')"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO api_keys (account_id, name, prefix, key_hash, created_at)"
                    " VALUES (1, '', 'dk-x', 'h', '2026-01-01 00:00:00')"
                )
            )
            for status, extra in (("completed", "'[\"a.png\"]'"), ("pending", "NULL")):
                await conn.execute(
                    text(
                        "INSERT INTO tasks (id, account_id, api_key_id, model, prompt, size,"
                        " quality, width, height, seed, nsfw_check, batch_key, status, progress,"
                        " attempt, credits_reserved, estimated_time, result_keys, created_at,"
                        " finished_at, results_deleted) VALUES"
                        f" ('task-unified-1-{status[:8]:a<8}', 1, 1, 'krea-2-turbo', 'p', '1:1',"
                        f" '2K', 2048, 2048, 1, false, 'k', '{status}', 0, 1, 1.8, 9, {extra},"
                        " '2026-01-01 00:00:00',"
                        f" {'NULL' if status == 'pending' else chr(39) + '2026-01-01 00:01:00' + chr(39)},"
                        " false)"
                    )
                )
        await upgrade(db)
        async with db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(tasks.c.status, tasks.c.price_micro, tasks.c.charged_micro).order_by(
                        tasks.c.status
                    )
                )
            ).all()
            account = (await conn.execute(select(accounts))).one()
        assert [tuple(r) for r in rows] == [
            ("completed", 1_800_000, 1_800_000),
            ("pending", 1_800_000, None),
        ]
        assert account.balance_micro == 0 and account.used_micro == 0
    finally:
        await db.dispose()
    # 0005 dropped the float duplicate of the price; going back rebuilds it from price_micro.
    unchecked = Database(database_url, foreign_keys=False)
    try:
        async with unchecked.engine.connect() as conn:
            await conn.execution_options(**WRITES)
            await conn.run_sync(lambda sync: command.downgrade(_config(sync), "0004"))
            await conn.commit()
        async with unchecked.engine.connect() as conn:
            prices = (await conn.execute(text("SELECT credits_reserved FROM tasks"))).scalars()
            assert sorted(prices) == [1.8, 1.8]
    finally:
        await unchecked.dispose()


async def test_checking_the_revision_logs_nothing(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every service checks the schema at start; only applied migrations are worth a line."""
    db = Database(database_url)
    try:
        await upgrade(db)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            await ensure_current(db)
        assert [r for r in caplog.records if r.name.startswith("alembic")] == []
        assert logging.getLogger("alembic.runtime.migration").level == logging.NOTSET
    finally:
        await db.dispose()


def test_the_head_read_off_file_names_is_alembics() -> None:
    """`head_revision` reads the migrations' file names, so a command at head never imports
    Alembic; the scripts' own chain must agree (a file misnamed, or a branch, breaks this)."""
    from alembic.script import ScriptDirectory

    from darkroom.db import migrate

    scripts = ScriptDirectory(str(migrate._INI.parent / "migrations"))
    assert migrate.head_revision() == scripts.get_current_head()
    for script in scripts.walk_revisions():
        assert Path(script.path).name.startswith(f"{script.revision}_")


@pytest.mark.process
def test_a_command_at_head_imports_no_alembic(tmp_path: Path) -> None:
    """The check at every start is one read: Alembic is imported only to migrate."""
    db_file = tmp_path / "d.db"
    code = (
        "import asyncio, sys\n"
        "from darkroom.db.database import Database\n"
        "from darkroom.db.migrate import upgrade\n"
        f"db = Database('sqlite+aiosqlite:///{db_file}')\n"
        "asyncio.run(upgrade(db))\n"
        "print('alembic' in sys.modules)\n"
        "asyncio.run(upgrade(db))\n"
    )
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert first.stdout.strip() == "True"  # an empty database: migrated, with Alembic
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert again.stdout.strip() == "False"  # at head: one read


def test_code_serves_its_own_schema_and_a_later_releases_but_not_an_earlier_one() -> None:
    from darkroom.db.migrate import head_revision, serves

    head = head_revision()
    assert head is not None and head.isdigit()
    later = f"{int(head) + 1:04d}"
    assert serves(head, head)
    assert serves(later, head)  # expand-then-contract: the release before still runs
    assert not serves("0001", head)
    assert not serves(None, head)
    assert not serves("abc123", head)  # not a revision of ours at all


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_schema_one_release_ahead_is_served_and_one_behind_refused(
    database_url: str,
) -> None:
    from darkroom.db.migrate import head_revision

    db = Database(database_url)
    try:
        await upgrade(db)
        head = head_revision()
        assert head is not None
        async with db.transaction() as conn:
            await conn.execute(
                text("UPDATE alembic_version SET version_num = :v"), {"v": f"{int(head) + 1:04d}"}
            )
        await ensure_current(db)  # the next release migrated: this one keeps running
        async with db.transaction() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '0008'"))
        with pytest.raises(RuntimeError, match="darkroom migrate"):
            await ensure_current(db)
    finally:
        await db.dispose()
