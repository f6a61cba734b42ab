"""darkroom A (API and a forwarding worker) in front of darkroom B (its tiny engine behind B's
`/openai/v1`), configured exactly as an operator writes it. A task through A completes with B's
picture for its seed; B SIGKILLed mid-request and restarted loses nothing and charges once; B
down makes A's worker not ready, with A's tasks waiting, not failed."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import on_database

from .procs import create_key, pause_after_first_step, service_env, serving, wait_for

pytestmark = pytest.mark.timeout(300)


def until(check: object, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.1)


def pixels_of(png: bytes) -> bytes:
    return Image.open(io.BytesIO(png)).convert("RGB").tobytes()


def generating_on(env: dict[str, str]) -> bool:
    """Whether a task is being generated on the darkroom of `env` (read from its database)."""
    from sqlalchemy import func, select

    from darkroom.db.schema import tasks

    query = select(func.count()).where(tasks.c.status == "processing")

    async def count(db: Any) -> int:
        return int(await db.read(lambda conn: conn.execute(query).scalar_one()))

    return on_database(env["DARKROOM_DATABASE_URL"], count) > 0


@pytest.mark.slow
def test_a_task_through_a_forwarding_darkroom(tmp_path: Path, tiny_model_dir: Path) -> None:
    b_env = service_env(tmp_path / "b", f"sqlite+aiosqlite:///{tmp_path}/b.db", tiny_model_dir)
    b_key = create_key(b_env, "front")
    with serving("serve", b_env, tmp_path / "b.log") as b:
        remote = {"url": f"{b.base_url}/openai/v1", "flavor": "darkroom", "api_key": b_key}
        ready = tmp_path / "a-ready"
        a_env = service_env(
            tmp_path / "a",
            f"sqlite+aiosqlite:///{tmp_path}/a.db",
            tiny_model_dir,
            DARKROOM_MODELS=json.dumps({"krea-2-turbo": {"remote": remote}}),
            DARKROOM_WORKER_READY_FILE=str(ready),
        )
        key = create_key(a_env, "customer")
        auth = {"Authorization": f"Bearer {key}"}
        with (
            serving("serve", a_env, tmp_path / "a.log") as a,
            httpx.Client(base_url=a.base_url, timeout=60) as client,
        ):
            until(ready.exists, "A's worker never became ready (its probe of B)")
            task = client.post(
                "/v1/images/generations",
                json={"model": "krea-2-turbo", "prompt": "a lighthouse", "size": "16:9",
                      "seed": 42},
                headers=auth,
            ).json()  # fmt: skip
            done = wait_for(client, key, task["id"])[-1]
            assert done["status"] == "completed", done
            through_a = httpx.get(done["results"][0]).content
            assert Image.open(io.BytesIO(through_a)).size == (1344, 768)
            straight = httpx.post(
                f"{b.base_url}/openai/v1/images/generations",
                json={"prompt": "a lighthouse", "size": "1344x768", "seed": 42},
                headers={"Authorization": f"Bearer {b_key}"},
                timeout=60,
            ).json()
            b_png = base64.b64decode(straight["data"][0]["b64_json"])
            assert pixels_of(through_a) == pixels_of(b_png)  # B's picture, for its seed
            spent = client.get("/v1/credits", headers=auth).json()["data"]["user"]

            # B dies mid-request (held at its first step) and comes back.
            pause = pause_after_first_step(b_env)
            held = client.post(
                "/v1/images/generations",
                json={"model": "krea-2-turbo", "prompt": "a storm", "seed": 7},
                headers=auth,
            ).json()
            until(
                lambda: (
                    client.get(f"/v1/tasks/{held['id']}", headers=auth).json()["status"]
                    == "processing"
                ),
                "A never took the task",
            )
            until(lambda: generating_on(b_env), "A's request never reached B's worker")
            b.process.kill()
            b.process.wait()
            pause.unlink()
            until(lambda: not ready.exists(), "A's worker still says it is ready with B down")
            # Given back once its retries are spent, with its attempt: not failed.
            until(
                lambda: (
                    client.get(f"/v1/tasks/{held['id']}", headers=auth).json()["status"]
                    != "processing"
                ),
                "A never gave the task back",
            )
            assert client.get(f"/v1/tasks/{held['id']}", headers=auth).json()["status"] == "pending"
            # B comes back on its address; A's worker finds it by its probe and carries on.
            port = int(b.base_url.rsplit(":", 1)[1])
            with serving("serve", b_env, tmp_path / "b2.log", port=port):
                ended = wait_for(client, key, held["id"])[-1]
                assert ended["status"] == "completed", ended
                until(ready.exists, "A's worker did not say it is ready again")
            after = client.get("/v1/credits", headers=auth).json()["data"]["user"]
            charged = round(spent["remaining_credits"] - after["remaining_credits"], 6)
            assert charged == pytest.approx(0.45, abs=1e-6)  # once, though B was killed
