"""Two API processes on one database, many creates at once: the balance is never overdrawn."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import httpx

from darkroom.accounts.store import AccountStore
from darkroom.billing.money import to_micro
from tests.conftest import on_database

from .procs import cli, service_env, serving


def test_two_api_processes_share_one_exact_balance(tmp_path: Path, database_url: str) -> None:
    env = service_env(tmp_path / "data", database_url, tmp_path / "tiny")
    cli(env, "accounts", "create", "tight", "--credits", "2.5")  # 5 tasks at 0.45, 0.25 left
    key = cli(env, "keys", "create", "--account", "tight").stdout.strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "krea-2-turbo", "prompt": "p"}
    with serving("api", env, tmp_path / "a.log") as a, serving("api", env, tmp_path / "b.log") as b:
        bases = [a.base_url, b.base_url] * 10

        def post(base: str) -> int:
            url = f"{base}/v1/images/generations"
            return httpx.post(url, json=body, headers=headers, timeout=60).status_code

        with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
            codes = sorted(pool.map(post, bases))
    assert codes == [200] * 5 + [402] * 15
    account = on_database(database_url, lambda db: AccountStore(db).get_account("tight"))
    assert account is not None
    assert account.balance_micro == to_micro(0.25)
