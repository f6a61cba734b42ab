"""With Redis, one key's rate limit holds across two API processes (real Redis, real HTTP)."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from .procs import cli, service_env, serving


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_rate_limit_is_shared_by_two_api_processes(
    tmp_path: Path, database_url: str, redis_server: str
) -> None:
    env = service_env(
        tmp_path / "data",
        database_url,
        tmp_path / "tiny",
        DARKROOM_REDIS_URL=redis_server,
        DARKROOM_REDIS_PREFIX=f"test-{uuid.uuid4().hex}",
    )
    cli(env, "accounts", "create", "shared", "--credits", "100")
    out = cli(env, "keys", "create", "--account", "shared", "--rate-limit", "4/minute").stdout
    key = out.strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "krea-2-turbo", "prompt": "p"}
    with serving("api", env, tmp_path / "a.log") as a, serving("api", env, tmp_path / "b.log") as b:
        codes = []
        for base in (a.base_url, b.base_url, a.base_url, b.base_url, a.base_url, b.base_url):
            codes.append(
                httpx.post(f"{base}/v1/images/generations", json=body, headers=headers).status_code
            )
    assert codes == [200, 200, 200, 200, 429, 429]
