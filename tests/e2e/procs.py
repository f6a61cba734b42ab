"""Real darkroom processes for end-to-end tests: the CLI, `serve`, `api` and `worker`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from darkroom.accounts.store import AccountStore
from darkroom.billing.money import to_micro
from darkroom.db.database import Database
from darkroom.db.migrate import upgrade
from darkroom.tasks.model import Task
from darkroom.tasks.store import TaskStore
from tests.conftest import darkroom_cmd, on_database


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def service_env(data_dir: Path, database_url: str, tiny_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env.update(
        {
            "DARKROOM_DATA_DIR": str(data_dir),
            "DARKROOM_DATABASE_URL": database_url,
            "DARKROOM_ENGINE": "tiny",
            "DARKROOM_TINY_MODEL_PATH": str(tiny_dir),
            "DARKROOM_LEASE_S": "4",
            "DARKROOM_HEARTBEAT_S": "1",
            "DARKROOM_MAINTENANCE_INTERVAL_S": "0.5",
            "DARKROOM_WORKER_POLL_INTERVAL_S": "0.1",
            "DARKROOM_PROGRESS_FLUSH_S": "0.1",
            # Absent unless a test makes it (pause_after_first_step).
            "DARKROOM_TINY_PAUSE_FILE": str(data_dir / "pause-after-first-step"),
            # The tests poll every 50 ms; limits are tested on their own (test_limits,
            # test_create_errors' guessing of keys).
            "DARKROOM_QUERY_RATE_LIMIT": "100000/minute",
            "DARKROOM_FAILED_AUTH_RATE_LIMIT": "100000/minute",
            "DARKROOM_DEFAULT_MAX_CONCURRENT": "1000",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*darkroom_cmd(), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )


def create_key(env: dict[str, str], account: str) -> str:
    """A key of `account` (made if new, with a million credits added), written straight to the
    database the services of `env` use, migrated first if it was not: what `darkroom keys
    create --create-account` and `darkroom accounts top-up` do (tests/test_cli.py runs those),
    without two process starts per key."""

    async def make(db: Database) -> str:
        await upgrade(db)
        store = AccountStore(db)
        await store.ensure_account(account)
        await store.change_balance(account, add_micro=to_micro(1_000_000), note="test funds")
        _, key = await store.create_key(account)
        return key

    return on_database(env["DARKROOM_DATABASE_URL"], make)


@dataclass
class Service:
    base_url: str
    process: subprocess.Popen[str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running(
    args: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None
) -> Iterator[subprocess.Popen[str]]:
    """A darkroom process whose output goes to `log_path`; stopped (TERM, then KILL) on exit."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*darkroom_cmd(), *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@contextmanager
def serving(
    role: str, env: dict[str, str], log_path: Path, cwd: Path | None = None, port: int = 0
) -> Iterator[Service]:
    """`darkroom serve` or `darkroom api` on loopback (`port`, or a free one) once it answers
    /healthz."""
    port = port or free_port()
    args = [role, "--host", "127.0.0.1", "--port", str(port)]
    with running(args, env, log_path, cwd) as proc:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{role} exited early:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{role} did not come up:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield Service(base, proc, log_path)


def create_task(client: httpx.Client, key: str, **body: Any) -> dict[str, Any]:
    payload = {"model": "krea-2-turbo", "prompt": "a lighthouse at dusk", **body}
    response = client.post(
        "/v1/images/generations", json=payload, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    return created


def pause_after_first_step(env: dict[str, str]) -> Path:
    """Make the service's tiny engine wait after the first step of its next generations until
    the returned file is removed: progress between 0 and 100 is then there to be seen, however
    fast the machine (Settings.tiny_pause_file)."""
    pause = Path(env["DARKROOM_TINY_PAUSE_FILE"])
    pause.parent.mkdir(parents=True, exist_ok=True)
    pause.touch()
    return pause


def release_once_midway(pause: Path) -> Callable[[int], None]:
    """A progress observer that removes `pause` once it has seen progress between 0 and 100."""

    def seen(progress: int) -> None:
        if 0 < progress < 100:
            pause.unlink(missing_ok=True)

    return seen


def wait_for(
    client: httpx.Client,
    key: str,
    task_id: str,
    *,
    timeout: float = 180,
    poll_s: float = 0.05,
    release: Path | None = None,
) -> list[dict[str, Any]]:
    """Poll a task until it ends; returns every body seen, in order. With `release`, the pause
    file is removed once a poll has shown progress between 0 and 100."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
        seen.append(response.json())
        if release is not None:
            release_once_midway(release)(seen[-1]["progress"])
        if seen[-1]["status"] in ("completed", "failed"):
            return seen
        time.sleep(poll_s)
    raise AssertionError(f"task {task_id} did not finish in {timeout}s; last: {seen[-1:]}")


def read_task(database_url: str, task_id: str) -> Task:
    """The task's row as the database holds it now."""
    task = on_database(database_url, lambda db: TaskStore(db).get(task_id))
    assert task is not None
    return task
