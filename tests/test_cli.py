"""The operator CLI, as automation uses it: a real `darkroom` process per command."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from darkroom.accounts.keys import looks_like_key
from darkroom.accounts.store import AccountStore, Principal
from tests.conftest import on_database
from tests.e2e.procs import cli, service_env


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_keys_create_list_revoke(tmp_path: Path, database_url: str) -> None:
    env = service_env(tmp_path / "data", database_url, tmp_path / "tiny")
    created = cli(env, "keys", "create", "--account", "ops", "--name", "ci", "--group", "pro")
    key = created.stdout.strip().splitlines()[-1]
    assert looks_like_key(key)
    assert key not in created.stderr

    listing = cli(env, "keys", "list").stdout
    assert "ops" in listing and "ci" in listing
    assert key not in listing  # never the secret, only its prefix

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
