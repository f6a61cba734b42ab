"""With Redis, one key's rate limit holds across two API processes (real Redis, real HTTP)."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from .procs import cli, create_key, service_env, serving


@pytest.fixture
def free_redis_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def own_redis(port: int, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A Redis server of the test's own on `port`, in the foreground (so it can be killed)."""
    server = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield server
    finally:
        server.kill()
        server.wait()


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


def test_redis_going_away_costs_no_request(tmp_path: Path, free_redis_port: int) -> None:
    """A Redis of this test's own, killed mid-run: every request is still answered (limits
    counted per process meanwhile, /readyz says so), none with a 500; Redis back, shared again."""
    url = f"redis://127.0.0.1:{free_redis_port}/0"
    env = service_env(
        tmp_path / "data",
        f"sqlite+aiosqlite:///{tmp_path}/t.db",
        tmp_path / "tiny",
        DARKROOM_REDIS_URL=url,
        DARKROOM_QUERY_RATE_LIMIT="5/minute",
    )
    key = create_key(env, "redis")
    headers = {"Authorization": f"Bearer {key}"}
    with (
        own_redis(free_redis_port, tmp_path) as redis,
        serving("api", env, tmp_path / "a.log") as api,
    ):

        def get(path: str) -> httpx.Response:
            return httpx.get(f"{api.base_url}{path}", headers=headers, timeout=10)

        assert get("/v1/credits").status_code == 200
        redis.kill()
        redis.wait()
        codes = [get("/v1/credits").status_code for _ in range(20)]
        assert 500 not in codes and codes[:4] == [200] * 4 and codes[-1] == 429, codes
        ready = get("/readyz")
        assert ready.status_code == 200 and "per-process" in ready.json()["rate_limits"]
        assert "darkroom_rate_limit_fallbacks_total 20.0" in get("/metrics").text
    with own_redis(free_redis_port, tmp_path), serving("api", env, tmp_path / "b.log") as api:
        assert httpx.get(f"{api.base_url}/readyz").json() == {"status": "ready"}
