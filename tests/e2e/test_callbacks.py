"""Callbacks end to end: real processes, a real HTTPS receiver on loopback, real signatures."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from darkroom.db.database import Database
from darkroom.tasks.model import Claim
from darkroom.tasks.outbox import Outbox
from darkroom.tasks.store import TaskStore
from tests.callbacks.receiver import https_receiver
from tests.conftest import on_database

from .procs import cli, create_key, create_task, service_env, serving, wait_for

MODELS = ["krea-2-turbo"]


def callback_env(tmp_path: Path, database_url: str, tiny: Path, ca_file: Path) -> dict[str, str]:
    return service_env(
        tmp_path / "data",
        database_url,
        tiny,
        DARKROOM_ENVIRONMENT="development",
        DARKROOM_CALLBACK_ALLOW_PRIVATE="true",
        DARKROOM_CALLBACK_CA_FILE=str(ca_file),
        DARKROOM_CALLBACK_POLL_INTERVAL_S="0.1",
    )


def test_every_finished_task_calls_back_exactly_once(
    tmp_path: Path, database_url: str, tiny_model_dir: Path
) -> None:
    with https_receiver(tmp_path, [200]) as receiver:
        env = callback_env(tmp_path, database_url, tiny_model_dir, receiver.ca_file)
        key = create_key(env, "hooked")
        secret = cli(env, "accounts", "webhook-secret", "hooked").stdout.strip().splitlines()[-1]
        with (
            serving("serve", env, tmp_path / "serve.log") as service,
            httpx.Client(base_url=service.base_url, timeout=30) as client,
        ):
            ids = [
                create_task(client, key, callback_url=receiver.url("127.0.0.1", f"/t{n}"))["id"]
                for n in range(3)
            ]
            finals = {task_id: wait_for(client, key, task_id)[-1] for task_id in ids}
            got = receiver.wait_for(3)
            time.sleep(1.5)  # long enough for a duplicate or a retry to show up
            assert receiver.count() == 3
        by_path = {r.path: r for r in got}
        assert sorted(by_path) == ["/t0", "/t1", "/t2"]
        for n, task_id in enumerate(ids):
            request = by_path[f"/t{n}"]
            assert Webhook(secret).verify(request.body, request.headers) == finals[task_id]
            assert json.loads(request.body)["status"] == "completed"


@pytest.mark.slow
def test_a_hanging_receiver_is_cut_at_ten_seconds_and_nothing_stalls(
    tmp_path: Path, database_url: str, tiny_model_dir: Path
) -> None:
    with https_receiver(tmp_path, [("hang", 20), 200]) as receiver:
        env = callback_env(tmp_path, database_url, tiny_model_dir, receiver.ca_file)
        key = create_key(env, "slow")
        with (
            serving("serve", env, tmp_path / "serve.log") as service,
            httpx.Client(base_url=service.base_url, timeout=30) as client,
        ):
            hooked = create_task(client, key, callback_url=receiver.url("127.0.0.1"))["id"]
            wait_for(client, key, hooked)
            [first] = receiver.wait_for(1)
            # While the receiver hangs, the API answers and the worker keeps generating.
            other = create_task(client, key)["id"]
            assert wait_for(client, key, other)[-1]["status"] == "completed"
            assert client.get("/healthz").status_code == 200
            assert receiver.count() == 1
            second = receiver.wait_for(2, timeout_s=30)[1]
        # Cut at 10 s, retried 1 s later: long before the receiver's 20 s were up.
        assert 10.5 <= second.at - first.at < 16, second.at - first.at
        state = on_database(database_url, lambda db: Outbox(db).states([hooked]))
        assert state[hooked] == ("delivered", 2, None)


def test_killing_the_sender_between_attempts_delivers_exactly_once_more(
    tmp_path: Path, database_url: str, tiny_model_dir: Path
) -> None:
    with https_receiver(tmp_path, [500, 200]) as receiver:
        env = callback_env(tmp_path, database_url, tiny_model_dir, receiver.ca_file)
        key = create_key(env, "crashy")
        with serving("api", env, tmp_path / "api1.log") as api:
            with httpx.Client(base_url=api.base_url, timeout=30) as client:
                task_id = create_task(client, key, callback_url=receiver.url("127.0.0.1"))["id"]

            async def finish(db: Database) -> None:  # the worker's part, done directly
                store = TaskStore(db)
                [task] = await store.claim("w", limit=1, lease_s=30, models=MODELS)
                assert await store.complete(Claim(task.id, task.attempt), ["x/0.png"])

            on_database(database_url, finish)
            receiver.wait_for(1)
            # Between attempts: the failure is recorded and the retry not yet due.
            deadline = time.monotonic() + 10
            while (
                on_database(database_url, lambda db: Outbox(db).states([task_id]))[task_id][1] < 1
            ):
                assert time.monotonic() < deadline, "the first attempt was never recorded"
                time.sleep(0.05)
            api.process.send_signal(signal.SIGKILL)
            api.process.wait(timeout=10)
        time.sleep(2.5)  # the retry fell due 1 s after the failure: nobody is there to send it
        assert receiver.count() == 1
        with serving("api", env, tmp_path / "api2.log"):
            got = receiver.wait_for(2, timeout_s=30)
            time.sleep(3)
            assert receiver.count() == 2
        assert got[0].headers["webhook-id"] == got[1].headers["webhook-id"] == f"msg_{task_id}"
        state = on_database(database_url, lambda db: Outbox(db).states([task_id]))
        assert state[task_id] == ("delivered", 2, None)


def test_the_development_setting_is_refused_in_production(
    tmp_path: Path, database_url: str
) -> None:
    import subprocess

    env = service_env(
        tmp_path / "data",
        database_url,
        tmp_path,
        DARKROOM_ENVIRONMENT="production",
        DARKROOM_SIGNING_SECRET="s" * 32,
        DARKROOM_CALLBACK_ALLOW_PRIVATE="true",
    )
    with pytest.raises(subprocess.CalledProcessError) as caught:
        cli(env, "migrate")
    assert caught.value.returncode == 2
    assert "CALLBACK_ALLOW_PRIVATE" in caught.value.stderr
