"""Results under races with real worker processes, on real SQLite and PostgreSQL: a fenced-out
attempt never touches the winner's file, and a task that ends failed leaves no file behind."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from darkroom.contract import FailureCode, Status
from tests.e2e.procs import create_key, create_task, read_task, running, serving, wait_for

# The SQL or the locking under test differs by backend.
pytestmark = pytest.mark.each_database


def wait_until(
    condition: object, what: str, timeout_s: float = 120, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            detail = log.read_text() if log is not None else ""
            raise AssertionError(f"timed out waiting for {what}\n{detail[-4000:]}")
        time.sleep(0.01)


def worker_ready(log: Path) -> bool:
    return log.exists() and "worker ready" in log.read_text()


@contextmanager
def task_row_held(database_url: str, task_id: str) -> Iterator[None]:
    """Block every write to the task's row (SQLite: to the whole database) until exit, as a
    slow database or a long lock would: the worker's completion waits behind it."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        conn = sqlite3.connect(str(url.database), isolation_level=None, timeout=30)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    locked, release = threading.Event(), threading.Event()

    async def hold() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                await conn.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", task_id)
                locked.set()
                await asyncio.to_thread(release.wait)
        finally:
            await conn.close()

    holder = threading.Thread(target=asyncio.run, args=(hold(),), daemon=True)
    holder.start()
    assert locked.wait(30), "could not lock the task's row"
    try:
        yield
    finally:
        release.set()
        holder.join(30)


@pytest.mark.slow
def test_a_stale_attempt_finishing_after_the_winner_leaves_the_winners_file(
    env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    key = create_key(env, "race")
    logs = {name: tmp_path / f"worker-{name}.log" for name in ("a", "b")}
    with (
        serving("api", env, tmp_path / "api.log") as api,
        httpx.Client(base_url=api.base_url, timeout=30) as client,
        running(["worker"], env, logs["a"]) as worker_a,
    ):
        wait_until(lambda: worker_ready(logs["a"]), "worker A to be ready", log=logs["a"])
        task_id = create_task(client, key, seed=5)["id"]
        # A logs "generating" as it starts: stopped within milliseconds, it is far from the
        # publish that follows its generation (~0.5 s or more for a tiny 1K image).
        wait_until(lambda: "generating" in logs["a"].read_text(), "worker A to start", timeout_s=60)
        worker_a.send_signal(signal.SIGSTOP)  # A hangs mid-generation: its lease runs out
        stopped = read_task(database_url, task_id)
        assert (stopped.status, stopped.attempt) == (Status.PROCESSING, 1), "A was stopped too late"
        assert not (tmp_path / "data" / "results" / task_id).exists()
        with running(["worker"], env, logs["b"]):  # B starts while A's lease runs out
            final = wait_for(client, key, task_id, timeout=180)[-1]
        assert final["status"] == "completed", final
        winner = read_task(database_url, task_id)
        assert winner.attempt == 2, "worker B's attempt, after the rescuer requeued the task"
        winner_png = httpx.get(final["results"][0], timeout=30)
        assert winner_png.status_code == 200

        worker_a.send_signal(signal.SIGCONT)  # A finishes its stale attempt after the winner
        wait_until(
            lambda: "result discarded" in logs["a"].read_text(),
            "worker A to find its attempt fenced out",
            log=logs["a"],
        )
        after = httpx.get(final["results"][0], timeout=30)
        assert after.status_code == 200, "the winner's link still serves its image"
        assert after.content == winner_png.content
    assert read_task(database_url, task_id).result_keys == (f"{task_id}/2.png",)
    files = sorted(p.name for p in (tmp_path / "data" / "results" / task_id).iterdir())
    assert files == ["2.png"], "the stale attempt removed its own file and only that"


def test_a_worker_killed_after_publishing_leaves_no_file_once_its_task_fails(
    env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    env = {**env, "DARKROOM_MAX_ATTEMPTS": "1"}  # the lost lease fails the task outright
    key = create_key(env, "killed")
    log = tmp_path / "worker.log"
    with (
        serving("api", env, tmp_path / "api.log") as api,
        httpx.Client(base_url=api.base_url, timeout=30) as client,
        running(["worker"], env, log) as worker,
    ):
        wait_until(lambda: worker_ready(log), "the worker to be ready", log=log)
        task_id = create_task(client, key, seed=9)["id"]
        published = tmp_path / "data" / "results" / task_id / "1.png"
        wait_until(
            lambda: read_task(database_url, task_id).status is Status.PROCESSING,
            "the worker to claim the task",
        )
        with task_row_held(database_url, task_id):  # its completion cannot commit
            wait_until(published.exists, "the worker to publish its result", log=log)
            worker.send_signal(signal.SIGKILL)  # between publishing and completing
            worker.wait(10)
        final = wait_for(client, key, task_id, timeout=120)[-1]
        assert final["status"] == "failed", final
        assert final["error"]["code"] == FailureCode.SERVICE_ERROR.value
        assert "results" not in final or not final["results"]
        wait_until(lambda: not published.exists(), "the rescuer to remove the published file")
    assert read_task(database_url, task_id).status is Status.FAILED
    folder = published.parent
    assert not folder.exists() or not any(folder.iterdir())


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_worker_rides_out_a_database_outage_with_its_model_loaded(
    env: dict[str, str], database_url: str, postgres: str, tmp_path: Path
) -> None:
    """PostgreSQL refuses the worker's database for a while (its connections cut, new ones
    refused), then comes back: the same worker process, its model never reloaded, carries on."""
    name = make_url(database_url).database
    key = create_key(env, "outage")
    log = tmp_path / "worker.log"

    async def admin(*statements: str) -> None:
        conn = await asyncpg.connect(postgres)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    with running(["worker"], env, log) as worker:
        wait_until(lambda: worker_ready(log), "the worker to be ready", log=log)
        asyncio.run(
            admin(
                f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false',
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                f" WHERE datname = '{name}' AND pid <> pg_backend_pid()",
            )
        )
        try:
            wait_until(
                lambda: log.read_text().count("database unavailable; retrying") >= 3,
                "the worker to fail to reach the database several times",
                log=log,
            )
            assert worker.poll() is None, log.read_text()
        finally:
            asyncio.run(admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        with (
            serving("api", env, tmp_path / "api.log") as api,
            httpx.Client(base_url=api.base_url, timeout=30) as client,
        ):
            task_id = create_task(client, key)["id"]
            final = wait_for(client, key, task_id, timeout=120)[-1]
        assert final["status"] == "completed", final
        assert worker.poll() is None
    text = log.read_text()
    assert "database reachable again" in text
    assert text.count("worker ready") == 1
    assert text.count("loading") == 1, "the model was loaded once"
