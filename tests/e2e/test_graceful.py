"""Stopping well: SIGTERM to a worker finishes the batch in hand (no task retried, none lost)
and leaves the rest queued; SIGTERM to an API process ends its event streams and exits. The
healthcheck command reports each role's readiness."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from darkroom.client.sse import EventParser, events
from tests.conftest import darkroom_cmd

from .procs import create_key, create_task, read_task, running, service_env, serving, wait_for


@pytest.fixture
def env(tmp_path: Path, tiny_model_dir: Path) -> dict[str, str]:
    """SQLite: stopping is about the processes, not the database."""
    return service_env(tmp_path / "data", f"sqlite+aiosqlite:///{tmp_path}/t.db", tiny_model_dir)


def healthcheck(*args: str) -> int:
    return subprocess.run(
        [*darkroom_cmd(), "healthcheck", *args], capture_output=True, timeout=60
    ).returncode


@pytest.mark.slow
def test_sigterm_finishes_the_batch_in_hand_and_leaves_the_rest(
    env: dict[str, str], tmp_path: Path
) -> None:
    ready = tmp_path / "worker-ready"
    env = env | {
        "DARKROOM_WORKER_READY_FILE": str(ready),
        "DARKROOM_WORKER_BATCH_SIZE": "2",
        "DARKROOM_NUM_INFERENCE_STEPS": "20",  # long enough to signal it mid-batch
    }
    key = create_key(env, "graceful")
    database_url = env["DARKROOM_DATABASE_URL"]
    assert healthcheck("--ready-file", str(ready)) == 1  # no worker yet
    with (
        serving("api", env, tmp_path / "api.log") as api,
        httpx.Client(base_url=api.base_url, timeout=30) as client,
    ):
        assert healthcheck("--url", api.base_url) == 0
        ids = [create_task(client, key, size="1:1")["id"] for _ in range(3)]
        with running(["worker"], env, tmp_path / "worker.log") as worker:
            deadline = time.monotonic() + 120
            while not all(read_task(database_url, i).status == "processing" for i in ids[:2]):
                assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
                time.sleep(0.05)
            assert healthcheck("--ready-file", str(ready)) == 0
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(120) == 0, (tmp_path / "worker.log").read_text()
        in_hand = [read_task(database_url, i) for i in ids[:2]]
        assert [t.status for t in in_hand] == ["completed", "completed"]
        assert [t.attempt for t in in_hand] == [1, 1]  # finished, not handed over and retried
        left = read_task(database_url, ids[2])
        assert left.status == "pending" and left.attempt == 0  # never claimed: still queued
        assert not ready.exists()
        with running(["worker"], env, tmp_path / "worker-2.log"):
            assert wait_for(client, key, ids[2])[-1]["status"] == "completed"


def test_sigterm_to_an_api_ends_its_streams_and_exits(env: dict[str, str], tmp_path: Path) -> None:
    key = create_key(env, "drain")
    auth = {"Authorization": f"Bearer {key}"}
    with serving("api", env, tmp_path / "api.log") as api:
        with httpx.Client(base_url=api.base_url, timeout=30) as client:
            task_id = create_task(client, key)["id"]  # no worker: it stays pending
            with client.stream("GET", f"/v1/tasks/{task_id}/events", headers=auth) as stream:
                lines = stream.iter_lines()
                parser = EventParser()
                first = next(events(lines, parser))
                assert first.event == "pending"
                api.process.send_signal(signal.SIGTERM)
                assert list(events(lines, parser)) == []  # ended, with no terminal event
        # uvicorn re-raises the signal once it has shut down: the exit says "stopped by TERM".
        assert api.process.wait(30) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in (tmp_path / "api.log").read_text()
