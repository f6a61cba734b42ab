"""Real worker processes: a SIGKILL mid-task loses nothing; concurrent workers never share a task."""

from __future__ import annotations

import re
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from darkroom.contract import Status

from .procs import create_key, create_task, read_task, running, service_env, serving, wait_for

# The SQL or the locking under test differs by backend.
pytestmark = pytest.mark.each_database


# SQLite here; on PostgreSQL, test_fleet's chaos run SIGKILLs workers under load.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sigkilled_worker_loses_nothing(
    env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    key = create_key(env, "crash")  # also migrates the database
    with (
        serving("api", env, tmp_path / "api.log") as api,
        httpx.Client(base_url=api.base_url, timeout=30) as client,
    ):
        # 2K at 2:1 is the tiny engine's slowest size: seconds of work to interrupt.
        created = create_task(client, key, size="2:1", quality="2K", seed=77)
        with running(["worker"], env, tmp_path / "worker-a.log") as worker_a:
            deadline = time.monotonic() + 120
            while read_task(database_url, created["id"]).status is not Status.PROCESSING:
                assert time.monotonic() < deadline, (tmp_path / "worker-a.log").read_text()
                time.sleep(0.1)
            first = read_task(database_url, created["id"])
            worker_a.send_signal(signal.SIGKILL)
            worker_a.wait(10)
        assert first.attempt == 1
        assert read_task(database_url, created["id"]).status is Status.PROCESSING

        with running(["worker"], env, tmp_path / "worker-b.log"):
            seen = wait_for(client, key, created["id"], timeout=300)
        final = seen[-1]
        assert final["status"] == "completed", final
        # Returned to the queue by the API's rescuer, then retaken. (Polling cannot be relied on
        # to catch the brief `pending` between the two; the rescuer's log line can.)
        rescued = [line for line in api.log().splitlines() if "rescued tasks" in line]
        assert any(created["id"] in line and "requeued" in line for line in rescued), api.log()
        task = read_task(database_url, created["id"])
        assert task.attempt == 2
        assert task.worker_id != first.worker_id
        assert task.started_at == first.started_at  # one task, run twice, finished once
        assert httpx.get(final["results"][0], timeout=30).status_code == 200
        log_a = (tmp_path / "worker-a.log").read_text()
        log_b = (tmp_path / "worker-b.log").read_text()
        assert "completed" not in log_a
        completions = [
            line
            for line in log_b.splitlines()
            if re.search(r"\]\s+completed\s", line) and created["id"] in line
        ]
        assert len(completions) == 1, log_b


@pytest.mark.slow
def test_concurrent_workers_never_take_the_same_task(env: dict[str, str], tmp_path: Path) -> None:
    key = create_key(env, "many")
    env = {**env, "OMP_NUM_THREADS": "1"}
    logs = [tmp_path / f"worker-{i}.log" for i in range(3)]
    with (
        serving("api", env, tmp_path / "api.log") as api,
        httpx.Client(base_url=api.base_url, timeout=30) as client,
    ):
        ids = [create_task(client, key, prompt=f"task {i}")["id"] for i in range(12)]
        with (
            running(["worker"], env, logs[0]),
            running(["worker"], env, logs[1]),
            running(["worker"], env, logs[2]),
        ):
            finals = [wait_for(client, key, task_id, timeout=300)[-1] for task_id in ids]
    assert all(f["status"] == "completed" for f in finals), finals
    generated: list[str] = []
    for log in logs:
        for line in log.read_text().splitlines():
            if "generating" in line:
                generated.extend(re.findall(r"task-unified-\d+-[a-z0-9]{8}", line))
    assert sorted(generated) == sorted(ids), "each task generated exactly once"
    busy = [log for log in logs if "generating" in log.read_text()]
    assert len(busy) >= 2, "the queue was shared between workers"


def test_worker_without_its_model_stops_with_the_fix(tmp_path: Path, database_url: str) -> None:
    import subprocess

    from tests.conftest import darkroom_cmd

    env = service_env(
        tmp_path / "data",
        database_url,
        tmp_path / "unused",
        DARKROOM_ENGINE="krea2",
        DARKROOM_MODEL_PATH=str(tmp_path / "no-such-weights"),
    )
    create_key(env, "migrate-only")
    done = subprocess.run(
        [*darkroom_cmd(), "worker"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 78, done.stderr
    assert "no-such-weights does not exist" in done.stderr
    assert "worker ready" not in done.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.slow
def test_one_accounts_backlog_does_not_starve_another(
    env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    """Eight tasks of one account queued first, one of another after them, one worker: the
    other account's task is taken second, not ninth, and its estimate said so."""
    greedy, modest = create_key(env, "greedy"), create_key(env, "modest")
    with (
        serving("api", env, tmp_path / "api.log") as api,
        httpx.Client(base_url=api.base_url, timeout=30) as client,
    ):
        backlog = [create_task(client, greedy, seed=n + 1)["id"] for n in range(8)]
        late = create_task(client, modest, seed=99)
        polled = client.get(
            f"/v1/tasks/{backlog[-1]}", headers={"Authorization": f"Bearer {greedy}"}
        )
        assert late["task_info"]["estimated_time"] < polled.json()["task_info"]["estimated_time"]
        with running(["worker"], env, tmp_path / "worker.log"):
            wait_for(client, modest, late["id"], timeout=300)
            for task_id in backlog:
                wait_for(client, greedy, task_id, timeout=300)
    started = {t: read_task(database_url, t).started_at for t in [*backlog, late["id"]]}
    order = sorted(started, key=lambda t: started[t] or datetime.max.replace(tzinfo=UTC))
    assert order.index(late["id"]) == 1, order
