"""The operator CLI, as automation uses it: a real `darkroom` process per command."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from darkroom.accounts.keys import looks_like_key
from darkroom.accounts.store import AccountStore, Principal
from darkroom.contract import Quality
from darkroom.db.database import Database
from darkroom.tasks.model import Claim
from darkroom.tasks.store import TaskStore
from tests.conftest import on_database
from tests.e2e.procs import cli, service_env
from tests.helpers import add_task

# Starts processes (`make unit` leaves it out).
pytestmark = pytest.mark.process


def test_keys_create_list_revoke(tmp_path: Path, database_url: str) -> None:
    env = service_env(tmp_path / "data", database_url, tmp_path / "tiny")
    with pytest.raises(subprocess.CalledProcessError) as caught:  # a mistyped account name
        cli(env, "keys", "create", "--account", "opps")
    assert "no account named 'opps'" in caught.value.stderr
    assert "--create-account" in caught.value.stderr
    assert "alembic" not in caught.value.stderr.lower(), "it migrated, without chatter"
    assert "opps" not in cli(env, "accounts", "list").stdout, "no empty account was made"
    created = cli(
        env, "keys", "create", "--account", "ops", "--create-account", "--name", "ci",
        "--group", "pro",
    )  # fmt: skip
    key = created.stdout.strip().splitlines()[-1]
    assert looks_like_key(key)
    assert key not in created.stderr

    listing = cli(env, "keys", "list").stdout
    assert "ops" in listing and "ci" in listing
    assert key not in listing  # never the secret, only its prefix
    # Piped, the table is not cut at 80 columns: the creation time is there whole.
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", listing), listing

    def principal() -> Principal | None:
        return on_database(database_url, lambda db: AccountStore(db).authenticate(key))

    found = principal()
    assert found is not None
    assert found.user_group == "pro"
    cli(env, "keys", "revoke", "1")
    assert principal() is None
    with pytest.raises(subprocess.CalledProcessError):
        cli(env, "keys", "revoke", "1")  # already revoked: a clear non-zero exit


def test_bad_configuration_is_refused_at_start(tmp_path: Path) -> None:
    env = service_env(
        tmp_path / "data", "sqlite+aiosqlite:///x.db", tmp_path, DARKROOM_LEASE_S="-1"
    )
    with pytest.raises(subprocess.CalledProcessError) as caught:
        cli(env, "migrate")
    assert caught.value.returncode == 2
    assert "lease_s" in caught.value.stderr


def test_accounts_balances_and_usage(tmp_path: Path, database_url: str) -> None:
    env = service_env(tmp_path / "data", database_url, tmp_path / "tiny")
    cli(env, "accounts", "create", "acme", "--group", "pro", "--credits", "10")
    with pytest.raises(subprocess.CalledProcessError):
        cli(env, "accounts", "create", "acme")  # exists: refused, balance untouched
    cli(env, "accounts", "top-up", "acme", "2.5", "--note", "invoice 7")
    with pytest.raises(subprocess.CalledProcessError) as caught:
        cli(env, "accounts", "top-up", "acme", "--", "-100")
    assert "negative" in caught.value.stderr
    with pytest.raises(subprocess.CalledProcessError):
        cli(env, "accounts", "top-up", "nobody", "1")
    key = cli(env, "keys", "create", "--account", "acme", "--credit-limit", "5").stdout
    key = key.strip().splitlines()[-1]
    assert "5" in cli(env, "keys", "list").stdout

    async def spend(db: Database) -> None:
        store = AccountStore(db)
        principal = await store.authenticate(key)
        assert principal is not None
        tasks = TaskStore(db)
        for quality in (Quality.K1, Quality.K2):
            await add_task(db, (principal.account_id, principal.key_id), quality=quality)
            [claimed] = await tasks.claim("w", limit=1, lease_s=30, models=["krea-2-turbo"])
            await tasks.complete(Claim(claimed.id, claimed.attempt), ["k.png"])

    on_database(database_url, spend)
    listing = cli(env, "accounts", "list").stdout
    assert "acme" in listing and "pro" in listing and "10.25" in listing  # 12.5 - 2.25
    usage = cli(env, "accounts", "usage", "--account", "acme").stdout
    assert "krea-2-turbo" in usage and "0.45" in usage and "1.8" in usage and "2.25" in usage
    cli(env, "accounts", "set-balance", "acme", "1")
    assert "1 " in cli(env, "accounts", "list").stdout
    old = cli(env, "accounts", "usage", "--until", "2020-01-01").stdout
    assert "krea-2-turbo" not in old

    async def queue_one(db: Database) -> str:
        principal = await AccountStore(db).authenticate(key)
        assert principal is not None
        return (await add_task(db, (principal.account_id, principal.key_id))).id

    task_id = on_database(database_url, queue_one)
    assert "0.55" in cli(env, "accounts", "list").stdout  # 0.45 reserved
    cli(env, "tasks", "cancel", task_id)
    with pytest.raises(subprocess.CalledProcessError):
        cli(env, "tasks", "cancel", task_id)  # already ended: a clear non-zero exit
    assert "│ 1 " in cli(env, "accounts", "list").stdout  # the reservation came back


def test_help_shows_no_type_after_a_plain_flag(tmp_path: Path) -> None:
    """`--json <bool>` read as if it took a value (`--no-wait true` fails)."""
    env = service_env(tmp_path / "data", "sqlite+aiosqlite:///unused.db", tmp_path / "tiny")
    shown = cli(env, "generate", "--help").stdout
    assert "--no-wait" in shown and "<bool>" not in shown
    assert "<int>" in shown  # options that take a value still say which


def test_callbacks_list_show_and_retry(tmp_path: Path, database_url: str) -> None:
    """An operator finds the callback that gave up, reads each attempt, and sends it again."""
    from darkroom.clock import utcnow
    from darkroom.tasks.outbox import MAX_ATTEMPTS, Outbox
    from tests.helpers import make_account

    env = service_env(tmp_path / "data", database_url, tmp_path / "tiny")
    cli(env, "migrate")

    async def gave_up(db: Database) -> str:
        ids = await make_account(db, "acme")
        task = await add_task(db, ids, callback_url="https://hooks.example/done")
        store, outbox = TaskStore(db), Outbox(db)
        [claimed] = await store.claim("w", limit=1, lease_s=30, models=("krea-2-turbo",))
        assert await store.complete(Claim(claimed.id, claimed.attempt), [f"{task.id}/0.png"])
        for _ in range(MAX_ATTEMPTS):
            [delivery] = await outbox.claim_due("s", limit=1, lock_s=30, now=utcnow())
            await outbox.record(delivery, "s", delivered=False, error="HTTP 503", now=utcnow())
            await db.write(lambda conn: conn.exec_driver_sql(
                "UPDATE callbacks SET next_attempt_at = created_at"
            ))  # fmt: skip
        return task.id

    task_id = on_database(database_url, gave_up)
    listing = cli(env, "callbacks", "list", "--status", "failed").stdout
    assert task_id in listing and "acme" in listing and "HTTP 503" in listing
    assert "https://hooks.example/done" in listing
    assert task_id not in cli(env, "callbacks", "list", "--status", "pending").stdout
    shown = cli(env, "callbacks", "show", task_id).stdout
    assert shown.count("HTTP 503") == MAX_ATTEMPTS and "failed" in shown

    retried = cli(env, "callbacks", "retry", "--all-failed")
    assert retried.stdout.split() == [task_id]
    assert "1 callback(s) queued again" in retried.stderr
    assert task_id in cli(env, "callbacks", "list", "--status", "pending").stdout
    with pytest.raises(subprocess.CalledProcessError) as caught:  # pending now: left alone
        cli(env, "callbacks", "retry", task_id)
    assert caught.value.returncode == 1 and "still pending" in caught.value.stderr
    with pytest.raises(subprocess.CalledProcessError):
        cli(env, "callbacks", "list", "--status", "lost")  # not a state
