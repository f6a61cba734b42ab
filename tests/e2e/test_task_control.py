"""Cancel, list and queue position over real HTTP, with `darkroom serve`'s real worker held on
its first task (after its first step) so the rest wait, and a real HTTPS callback receiver."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.callbacks.receiver import https_receiver

from .procs import create_key, create_task, pause_after_first_step, serving, wait_for
from .test_callbacks import callback_env

pytestmark = pytest.mark.timeout(240)


def poll(client: httpx.Client, key: str, task_id: str) -> dict[str, object]:
    response = client.get(f"/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def position(client: httpx.Client, key: str, task_id: str) -> object:
    info = poll(client, key, task_id)["task_info"]
    assert isinstance(info, dict)
    return info.get("queue_position")


def until(check: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.1)


@pytest.mark.slow
def test_cancel_list_and_queue_position_with_a_real_worker(
    tmp_path: Path, database_url: str, tiny_model_dir: Path
) -> None:
    with https_receiver(tmp_path, [200]) as receiver:
        env = callback_env(tmp_path, database_url, tiny_model_dir, receiver.ca_file)
        env["DARKROOM_MODELS"] = json.dumps({"krea-2-turbo": {"cancellable": True}})
        key, other = create_key(env, "canceller"), create_key(env, "bystander")
        auth = {"Authorization": f"Bearer {key}"}
        pause = pause_after_first_step(env)
        with (
            serving("serve", env, tmp_path / "serve.log") as service,
            httpx.Client(base_url=service.base_url, timeout=30) as client,
        ):
            spent = client.get("/v1/credits", headers=auth).json()["data"]["user"]
            generating = create_task(client, key)["id"]
            until(lambda: poll(client, key, generating)["status"] == "processing", "never claimed")
            hook = receiver.url("127.0.0.1", "/cancelled")
            waiting = [create_task(client, key, callback_url=hook)["id"]] + [
                create_task(client, key)["id"] for _ in range(2)
            ]
            until(
                lambda: [position(client, key, t) for t in waiting] == [1, 2, 3],
                "queue positions are not 1, 2, 3",
            )

            # A pending task: cancelled, refunded, its callback sent once.
            cancelled = client.post(f"/v1/tasks/{waiting[0]}/cancel", headers=auth)
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["error"]["code"] == "request_cancelled"
            until(lambda: position(client, key, waiting[2]) == 2, "the position did not fall")
            [callback] = receiver.wait_for(1)
            assert json.loads(callback.body)["error"]["code"] == "request_cancelled"

            # The task being generated: 409, and it goes on.
            busy = client.post(f"/v1/tasks/{generating}/cancel", headers=auth)
            assert busy.status_code == 409
            assert busy.json()["error"]["code"] == "task_not_cancellable"

            # The list: newest first, in pages; another account sees none of it.
            first = client.get("/v1/tasks?limit=2", headers=auth).json()
            rest = client.get(f"/v1/tasks?cursor={first['next_cursor']}", headers=auth).json()
            listed = [t["id"] for t in first["data"] + rest["data"]]
            assert listed == [*waiting[::-1], generating]
            assert rest["has_more"] is False
            theirs = client.get("/v1/tasks", headers={"Authorization": f"Bearer {other}"})
            assert theirs.json()["data"] == []

            pause.unlink()
            for task_id in (generating, *waiting[1:]):
                assert wait_for(client, key, task_id)[-1]["status"] == "completed"
            time.sleep(1.0)  # long enough for a second callback to show up
            assert receiver.count() == 1
            ended = client.get("/v1/credits", headers=auth).json()["data"]["user"]
            charged = round(spent["remaining_credits"] - ended["remaining_credits"], 6)
            assert charged == pytest.approx(3 * 0.45, abs=1e-6)  # the cancelled one is not
