"""The OpenAI-compatible route in-process: the wire, the mapping onto tasks, the deadline, a
retry joined to its first attempt, failures, the models list. A stand-in worker claims and
finishes tasks through the task store; the real `openai` package against a real server is
tests/e2e/test_openai.py."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from darkroom.billing.money import to_micro
from darkroom.contract import FailureCode
from darkroom.db.database import Database
from darkroom.errors import RateLimited, ServiceUnavailable
from darkroom.settings import Settings
from darkroom.storage.factory import storage_from_settings
from darkroom.tasks.model import Claim
from darkroom.tasks.store import TaskStore
from tests.conftest import PLENTY, make_settings
from tests.helpers import assert_error, task_count

URL = "/openai/v1/images/generations"
PRICE = to_micro(0.45)


@pytest.fixture
def settings(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: str, tiny_model_dir: Path
) -> Settings:
    # With the stand-in worker, a second's wait: it ends tasks in a few hundredths. Without
    # one, every wait ends in a 504 however long it is, so it is a twentieth of a second.
    wait_s = 1.0 if "worker" in request.fixturenames else 0.05
    return make_settings(
        tmp_path / "data",
        database_url,
        tiny_model_path=tiny_model_dir,
        openai_wait_s=wait_s,
        events_interval_s=0.05,
    )


class StandInWorker:
    """Claims pending tasks and ends them: completed with `png` as the result (seeded, so
    each task's bytes are its own), or failed with `fail_with`."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.store = TaskStore(db)
        self.storage = storage_from_settings(settings)
        self.fail_with: FailureCode | None = None

    @staticmethod
    def png(seed: int) -> bytes:
        return b"\x89PNG\r\n\x1a\n" + seed.to_bytes(4, "big")

    async def run(self) -> None:
        while True:
            for task in await self.store.claim("w", limit=8, lease_s=30, models=["krea-2-turbo"]):
                claim = Claim(task.id, task.attempt)
                if self.fail_with is not None:
                    await self.store.fail(claim, self.fail_with, "refused by the stand-in")
                    continue
                key = f"{task.id}/0.png"
                self.storage.put(key, self.png(task.seed))
                await self.store.complete(claim, [key])
            await asyncio.sleep(0.02)


@pytest.fixture
async def worker(db: Database, settings: Settings) -> AsyncIterator[StandInWorker]:
    stand_in = StandInWorker(db, settings)
    running = asyncio.create_task(stand_in.run())
    yield stand_in
    running.cancel()


async def reserved_micro(db: Database) -> int:
    """What alice's account is out of: reserved or charged, less what came back."""
    from sqlalchemy import select

    from darkroom.db.schema import accounts

    query = select(accounts.c.balance_micro).where(accounts.c.name == "alice")
    balance: int = await db.read(lambda conn: conn.execute(query).scalar_one())
    return PLENTY - balance


async def test_b64_json_is_the_png_of_a_task_of_the_asked_shape(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database, worker: StandInWorker
) -> None:
    body = {"model": "krea-2-turbo", "prompt": "a red fox", "size": "1344x768", "seed": 42}
    response = await client.post(URL, json=body, headers=auth)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"created", "data", "output_format"}
    assert answer["output_format"] == "png"
    [image] = answer["data"]
    assert base64.b64decode(image["b64_json"]) == worker.png(42)
    assert image["revised_prompt"] is None and "url" not in image
    assert image["seed"] == 42
    task = await TaskStore(db).get(image["task_id"])
    assert task is not None
    assert (task.size, task.quality.value, task.width, task.height) == ("16:9", "1K", 1344, 768)
    polled = await client.get(f"/v1/tasks/{task.id}", headers=auth)
    assert polled.json()["status"] == "completed"


async def test_url_is_a_link_that_serves_the_png(
    client: httpx.AsyncClient, auth: dict[str, str], worker: StandInWorker
) -> None:
    body = {"prompt": "a red fox", "response_format": "url", "seed": 5, "size": "2048x2048"}
    response = await client.post(URL, json=body, headers=auth)
    assert response.status_code == 200, response.text
    [image] = response.json()["data"]
    assert "b64_json" not in image
    fetched = await client.get(image["url"])
    assert fetched.status_code == 200
    assert fetched.content == worker.png(5)


async def test_n_images_are_n_tasks_with_consecutive_seeds_each_charged(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database, worker: StandInWorker
) -> None:
    body = {"prompt": "a red fox", "n": 3, "seed": 100}
    response = await client.post(URL, json=body, headers=auth)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [image["seed"] for image in data] == [100, 101, 102]
    assert [base64.b64decode(image["b64_json"]) for image in data] == [
        worker.png(s) for s in (100, 101, 102)
    ]
    assert len({image["task_id"] for image in data}) == 3
    assert await reserved_micro(db) == 3 * PRICE


async def test_without_a_seed_the_images_still_have_consecutive_ones(
    client: httpx.AsyncClient, auth: dict[str, str], worker: StandInWorker
) -> None:
    response = await client.post(URL, json={"prompt": "a red fox", "n": 2}, headers=auth)
    first, second = (image["seed"] for image in response.json()["data"])
    assert second == first + 1


QUALITY_AND_SIZE = [
    ({}, ("1:1", "1K")),
    ({"size": "auto"}, ("1:1", "1K")),
    ({"quality": "high"}, ("1:1", "2K")),
    ({"quality": "hd", "size": "auto"}, ("1:1", "2K")),
    ({"quality": "standard", "size": "768x1344"}, ("9:16", "1K")),
    ({"quality": "auto", "size": "2816x1408"}, ("2:1", "2K")),
    ({"quality": "2K", "size": "1664x2496"}, ("2:3", "2K")),
    ({"size": "1152x896"}, ("4:3", "1K")),  # also 5:4 at 1K: the same pixels
]


@pytest.mark.parametrize(("fields", "shape"), QUALITY_AND_SIZE)
async def test_openai_sizes_and_qualities_map_onto_the_contracts_table(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    db: Database,
    fields: dict[str, Any],
    shape: tuple[str, str],
) -> None:
    response = await client.post(URL, json={"prompt": "a red fox", **fields}, headers=auth)
    assert response.status_code == 504  # no worker: the shape is read off the task
    [task_id] = response.json()["error"]["task_ids"]
    task = await TaskStore(db).get(task_id)
    assert task is not None
    assert (task.size, task.quality.value) == shape


REFUSED = [
    ({"size": "1024x768"}, "size", "1344x768"),  # the message lists the sizes there are
    ({"size": "16:9"}, "size", "1344x768"),
    ({"quality": "ultra"}, "quality", None),
    ({"quality": "high", "size": "1344x768"}, "quality", "2688x1472"),
    ({"n": 0}, "n", None),
    ({"n": 11}, "n", "10"),
    ({"response_format": "png"}, "response_format", None),
    ({"output_format": "jpeg"}, "output_format", None),
    ({"stream": True}, "stream", None),
    ({"partial_images": 2}, "partial_images", None),
    ({"background": "transparent"}, "background", None),
    ({"style": "vivid"}, "style", None),
    ({"negative_prompt": "blurry"}, "negative_prompt", None),
    ({"num_inference_steps": 28}, "num_inference_steps", None),
    ({"image_urls": ["https://example.com/a.png"]}, "image_urls", None),
    ({"seed": 1_048_576, "n": 2}, "seed", None),
    ({"prompt": " "}, "prompt", None),
    ({"model": "dall-e-3"}, "model", None),
]


@pytest.mark.parametrize(("fields", "param", "mentions"), REFUSED)
async def test_what_cannot_be_honoured_is_a_400_naming_the_field(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    db: Database,
    fields: dict[str, Any],
    param: str,
    mentions: str | None,
) -> None:
    response = await client.post(URL, json={"prompt": "a red fox", **fields}, headers=auth)
    assert_error(response, 400, None, "invalid_request_error", param)
    if mentions is not None:
        assert mentions in response.json()["error"]["message"]
    assert await task_count(db) == 0


async def test_past_the_wait_the_answer_is_504_naming_the_tasks_which_go_on(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database
) -> None:
    response = await client.post(URL, json={"prompt": "a red fox", "n": 2}, headers=auth)
    assert response.status_code == 504
    assert response.headers["x-should-retry"] == "false"
    error = response.json()["error"]
    assert error["code"] == "timeout"
    assert len(error["task_ids"]) == 2
    for task_id in error["task_ids"]:
        assert task_id in error["message"]
        polled = await client.get(f"/v1/tasks/{task_id}", headers=auth)
        assert polled.json()["status"] == "pending"
    assert await reserved_micro(db) == 2 * PRICE


async def test_a_retry_joins_its_first_attempts_tasks_and_a_new_request_does_not(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database
) -> None:
    body = {"prompt": "a red fox", "n": 2}
    first = (await client.post(URL, json=body, headers=auth)).json()["error"]["task_ids"]
    retry = {**auth, "x-stainless-retry-count": "1"}
    again = (await client.post(URL, json=body, headers=retry)).json()["error"]["task_ids"]
    assert again == first
    assert await task_count(db) == 2
    assert await reserved_micro(db) == 2 * PRICE
    # The same body sent afresh (no retry count) is a new request: new pictures, new charges.
    fresh = (await client.post(URL, json=body, headers=auth)).json()["error"]["task_ids"]
    assert set(fresh).isdisjoint(first)
    # A retry of another body is not joined to either.
    other = await client.post(URL, json={**body, "n": 1}, headers=retry)
    assert other.json()["error"]["task_ids"][0] not in first + fresh
    assert await task_count(db) == 5


async def test_a_retry_of_a_request_whose_tasks_failed_makes_new_ones(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database, worker: StandInWorker
) -> None:
    worker.fail_with = FailureCode.SERVICE_ERROR
    body = {"prompt": "a red fox"}
    response = await client.post(URL, json=body, headers=auth)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "service_error"
    assert "x-should-retry" not in response.headers  # a retry may help
    worker.fail_with = None
    retried = await client.post(URL, json=body, headers={**auth, "x-stainless-retry-count": "1"})
    assert retried.status_code == 200
    assert await task_count(db) == 2
    assert await reserved_micro(db) == PRICE  # the failed one was refunded


async def test_a_refused_image_is_a_400_not_retried(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database, worker: StandInWorker
) -> None:
    worker.fail_with = FailureCode.CONTENT_POLICY_VIOLATION
    response = await client.post(URL, json={"prompt": "a red fox"}, headers=auth)
    assert_error(response, 400, "content_policy_violation", "invalid_request_error", None)
    assert response.headers["x-should-retry"] == "false"
    assert await reserved_micro(db) == 0


async def test_a_refused_prompt_is_refused_before_anything_is_queued(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database
) -> None:
    from tests.moderation.test_prompt import ALWAYS_REFUSED

    response = await client.post(URL, json={"prompt": ALWAYS_REFUSED[0]}, headers=auth)
    assert_error(response, 400, "content_policy_violation", "invalid_request_error", "prompt")
    assert await task_count(db) == 0


async def test_short_credits_queue_none_of_the_images(
    client: httpx.AsyncClient, db: Database
) -> None:
    from darkroom.accounts.store import AccountStore

    store = AccountStore(db)
    await store.create_account("bob", credits_micro=2 * PRICE)
    _, key = await store.create_key("bob")
    bob = {"Authorization": f"Bearer {key}"}
    response = await client.post(URL, json={"prompt": "a red fox", "n": 3}, headers=bob)
    assert_error(response, 402, "insufficient_quota", None, None)
    assert await task_count(db) == 0


async def test_the_models_are_listed_as_openai_model_objects(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await client.get("/openai/v1/models", headers=auth)
    assert response.status_code == 200
    assert response.json() == {
        "object": "list",
        "data": [{"id": "krea-2-turbo", "object": "model", "created": 0, "owned_by": "darkroom"}],
    }
    one = await client.get("/openai/v1/models/krea-2-turbo", headers=auth)
    assert one.json()["id"] == "krea-2-turbo"
    missing = await client.get("/openai/v1/models/krea/Krea-2-Turbo", headers=auth)
    assert_error(missing, 404, "not_found", None, None)
    no_key = await client.get("/openai/v1/models")
    assert_error(no_key, 401, "unauthorized", "authentication_error", None)


@pytest.mark.parametrize("busy", [ServiceUnavailable, RateLimited])
async def test_back_pressure_asks_for_a_retry_the_package_will_make(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    busy: type[ServiceUnavailable | RateLimited],
) -> None:
    """Past 120 s the `openai` package does not retry at all: the wait asked is at most that."""
    services = client._transport.app.state.services  # type: ignore[attr-defined]

    async def queue_full(*_args: object) -> None:
        raise busy("a queue 15 minutes long", retry_after=900)

    monkeypatch.setattr(services.submitter, "check", queue_full)
    response = await client.post(URL, json={"prompt": "a red fox"}, headers=auth)
    assert response.status_code == busy.status
    assert response.headers["retry-after"] == "120"
    task_route = await client.post(
        "/v1/images/generations", json={"model": "krea-2-turbo", "prompt": "p"}, headers=auth
    )
    assert task_route.headers["retry-after"] == "900"  # the task route says the whole wait
