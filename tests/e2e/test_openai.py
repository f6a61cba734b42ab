"""The real `openai` package against a real darkroom: `OpenAI(base_url=".../openai/v1")` as a
user writes it, with nothing else changed. `darkroom serve` (API and a tiny-engine worker) for
the images; a lone `darkroom api` (no worker: tasks stay pending) for the deadline and a client
that leaves. Every case checks what the account was charged."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
from PIL import Image

from tests.conftest import on_database

from .procs import cli, create_key, pause_after_first_step, service_env, serving

pytestmark = pytest.mark.timeout(240)

PRICE = 0.45


class Server:
    def __init__(self, base_url: str, key: str, env: dict[str, str], log: Path) -> None:
        self.base_url, self.key, self.env, self.log = base_url, key, env, log
        self.attempts = 0  # requests the `openai` package sent, retries included

    def joined_retries(self) -> int:
        """Retries the server answered with their first attempt's tasks, from its log."""
        return self.log.read_text(errors="replace").count("openai retry joins its first attempt")

    def client(self, **options: Any) -> openai.OpenAI:
        def count(_request: httpx2.Request) -> None:
            self.attempts += 1

        hooks = httpx2.Client(event_hooks={"request": [count]})
        return openai.OpenAI(
            base_url=f"{self.base_url}/openai/v1", api_key=self.key, http_client=hooks, **options
        )

    def spent(self) -> float:
        """Credits the key's account is out of (reserved or charged)."""
        response = httpx.get(
            f"{self.base_url}/v1/credits", headers={"Authorization": f"Bearer {self.key}"}
        )
        user = response.json()["data"]["user"]
        return round(1_000_000 - user["remaining_credits"], 6)


def start(tmp: Path, tiny: Path, role: str, **extra: str) -> Iterator[Server]:
    env = service_env(tmp / "data", f"sqlite+aiosqlite:///{tmp}/darkroom.db", tiny, **extra)
    cli(env, "migrate")
    key = create_key(env, "openai-user")
    with serving(role, env, tmp / f"{role}.log") as service:
        yield Server(service.base_url, key, env, service.log_path)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    yield from start(tmp_path_factory.mktemp("openai-serve"), tiny_model_dir, "serve")


@pytest.fixture(scope="module")
def unserved(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    """No worker, and a one-second wait: every request meets its deadline."""
    tmp = tmp_path_factory.mktemp("openai-api")
    yield from start(tmp, tiny_model_dir, "api", DARKROOM_OPENAI_WAIT_S="1")


def png_of(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return image


def test_b64_json_is_a_png_of_the_asked_size(served: Server) -> None:
    before = served.spent()
    with served.client() as client:
        result = client.images.generate(
            model="krea-2-turbo", prompt="a red fox", response_format="b64_json", size="1344x768"
        )
    assert result.data is not None and len(result.data) == 1
    assert png_of(result.data[0].b64_json or "").size == (1344, 768)
    assert served.spent() == pytest.approx(before + PRICE, abs=1e-6)


def test_url_is_a_link_that_serves_the_png(served: Server) -> None:
    with served.client() as client:
        result = client.images.generate(
            model="krea-2-turbo", prompt="a red fox", response_format="url"
        )
    assert result.data is not None
    link = result.data[0].url or ""
    fetched = httpx.get(link)  # no key: the link's signature is the permission
    assert fetched.status_code == 200
    assert Image.open(io.BytesIO(fetched.content)).size == (1024, 1024)


def test_n_images_have_consecutive_seeds_and_are_charged_each(served: Server) -> None:
    before = served.spent()
    with served.client() as client:
        result = client.images.generate(
            model="krea-2-turbo", prompt="a red fox", n=2, extra_body={"seed": 1234}
        )
        again = client.images.generate(
            model="krea-2-turbo", prompt="a red fox", extra_body={"seed": 1234}
        )
    assert result.data is not None
    assert [image.model_extra["seed"] for image in result.data if image.model_extra] == [
        1234,
        1235,
    ]
    first, second = (png_of(image.b64_json or "") for image in result.data)
    assert first.tobytes() != second.tobytes()  # two seeds, two pictures
    assert served.spent() == pytest.approx(before + 3 * PRICE, abs=1e-6)
    # The same seed again gives the same picture.
    assert again.data is not None
    assert png_of(again.data[0].b64_json or "").tobytes() == first.tobytes()


def test_the_models_list_names_the_served_model(served: Server) -> None:
    with served.client() as client:
        assert [model.id for model in client.models.list()] == ["krea-2-turbo"]
        assert client.models.retrieve("krea-2-turbo").owned_by == "darkroom"


def test_refusals_raise_bad_request_with_a_useful_message(served: Server) -> None:
    before = served.spent()
    with served.client() as client, pytest.raises(openai.BadRequestError) as size:
        client.images.generate(model="krea-2-turbo", prompt="a red fox", size="1792x1024")
    assert size.value.param == "size"
    assert "1344x768" in size.value.message  # the sizes there are
    with served.client() as client, pytest.raises(openai.BadRequestError) as prompt:
        client.images.generate(model="krea-2-turbo", prompt="a nude child")
    assert prompt.value.code == "content_policy_violation"
    assert served.spent() == before


def test_a_retry_after_a_dropped_connection_is_charged_once(served: Server) -> None:
    """The first attempt times out on the client while its task generates (held after its
    first step); the package retries with the same body, the retry joins the same task, and
    the one picture is charged once."""
    pause = pause_after_first_step(served.env)
    before = served.spent()
    served.attempts = 0
    joined_before = served.joined_retries()

    def release_after_the_retry() -> None:
        deadline = time.monotonic() + 60  # until the server has joined a retry to the task
        while served.joined_retries() == joined_before and time.monotonic() < deadline:
            time.sleep(0.05)
        pause.unlink(missing_ok=True)

    releaser = threading.Thread(target=release_after_the_retry)
    releaser.start()
    try:
        with served.client(timeout=4.0, max_retries=2) as client:
            result = client.images.generate(model="krea-2-turbo", prompt="a slow red fox")
    finally:
        pause.unlink(missing_ok=True)
        releaser.join()
    assert served.attempts >= 2  # it was retried
    assert served.joined_retries() > joined_before  # and the retry waited for the same task
    assert result.data is not None and len(result.data) == 1
    assert served.spent() == pytest.approx(before + PRICE, abs=1e-6)


def test_past_the_servers_wait_the_package_gets_504_and_does_not_retry(unserved: Server) -> None:
    unserved.attempts = 0
    before = unserved.spent()
    with unserved.client() as client, pytest.raises(openai.APIStatusError) as raised:
        client.images.generate(model="krea-2-turbo", prompt="a red fox")
    assert raised.value.status_code == 504
    assert unserved.attempts == 1  # x-should-retry: false
    assert isinstance(raised.value.body, dict)
    [task_id] = raised.value.body["task_ids"]
    assert task_id in raised.value.message
    task = httpx.get(
        f"{unserved.base_url}/v1/tasks/{task_id}",
        headers={"Authorization": f"Bearer {unserved.key}"},
    ).json()
    assert task["status"] == "pending"  # it goes on
    assert unserved.spent() == pytest.approx(before + PRICE, abs=1e-6)


def test_a_client_that_leaves_gets_its_pending_task_cancelled_and_refunded(
    unserved: Server,
) -> None:
    before = unserved.spent()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{unserved.base_url}/openai/v1/images/generations",
            json={"model": "krea-2-turbo", "prompt": "a red fox who will not wait"},
            headers={"Authorization": f"Bearer {unserved.key}"},
            timeout=httpx.Timeout(5.0, read=0.3),
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        cancelled = cancelled_tasks(unserved.env["DARKROOM_DATABASE_URL"])
        if cancelled:
            break
        time.sleep(0.1)
    assert len(cancelled) == 1
    assert unserved.spent() == before


def cancelled_tasks(database_url: str) -> list[str]:
    from sqlalchemy import select

    from darkroom.db.schema import tasks

    query = select(tasks.c.id).where(tasks.c.error_code == "request_cancelled")

    async def read(db: Any) -> list[str]:
        return list(await db.read(lambda conn: conn.execute(query).scalars().all()))

    return on_database(database_url, read)


def test_the_package_pointed_at_the_task_route_is_refused_not_charged(served: Server) -> None:
    """The mistake a new user makes first: base_url ending in /v1, the task route's path."""
    before = served.spent()
    wrong = openai.OpenAI(base_url=f"{served.base_url}/v1", api_key=served.key)
    with wrong, pytest.raises(openai.BadRequestError) as refused:
        wrong.images.generate(model="krea-2-turbo", prompt="a red fox")
    assert f"{served.base_url}/openai/v1" in refused.value.message
    assert served.spent() == before
