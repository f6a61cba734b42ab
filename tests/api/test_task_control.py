"""darkroom's task extensions in-process: cancel (by the registry's say), the key's task list
and its pages, the queue position. tests/e2e/test_task_control.py runs them against a worker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from darkroom.accounts.store import AccountStore
from darkroom.db.database import Database
from darkroom.settings import ModelConfig, Settings
from darkroom.tasks.model import Claim
from darkroom.tasks.store import TaskStore
from tests.conftest import PLENTY, make_settings
from tests.helpers import assert_error

CREATE = "/v1/images/generations"


@pytest.fixture
def settings(tmp_path: Path, database_url: str, tiny_model_dir: Path) -> Settings:
    return make_settings(
        tmp_path / "data",
        database_url,
        tiny_model_path=tiny_model_dir,
        models={"krea-2-turbo": ModelConfig(), "cancellable-model": ModelConfig(cancellable=True)},
        prices={"krea-2-turbo": {"1K": 0.45, "2K": 1.8}, "cancellable-model": {"1K": 1, "2K": 2}},
    )


async def create(client: httpx.AsyncClient, auth: dict[str, str], model: str) -> dict[str, Any]:
    response = await client.post(CREATE, json={"model": model, "prompt": "p"}, headers=auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def balance(db: Database) -> int:
    credits = await AccountStore(db).credits(1)
    return credits.account_balance_micro


async def test_a_cancellable_models_pending_task_is_cancelled_and_refunded(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database
) -> None:
    task = await create(client, auth, "cancellable-model")
    assert task["task_info"]["can_cancel"] is True
    assert await balance(db) == PLENTY - 1_000_000
    response = await client.post(f"/v1/tasks/{task['id']}/cancel", headers=auth)
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "failed"
    assert cancelled["error"]["code"] == "request_cancelled"
    assert cancelled["task_info"] == {"can_cancel": False}
    assert await balance(db) == PLENTY
    again = await client.post(f"/v1/tasks/{task['id']}/cancel", headers=auth)
    assert again.status_code == 200  # a retried cancel is answered, not refused
    assert again.json()["error"] == cancelled["error"]
    assert await balance(db) == PLENTY


async def test_krea_2_turbo_tasks_cannot_be_cancelled_as_the_contract_says(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database
) -> None:
    task = await create(client, auth, "krea-2-turbo")
    assert task["task_info"]["can_cancel"] is False
    response = await client.post(f"/v1/tasks/{task['id']}/cancel", headers=auth)
    assert_error(response, 409, "task_not_cancellable", "invalid_request_error", None)
    polled = await client.get(f"/v1/tasks/{task['id']}", headers=auth)
    assert polled.json()["status"] == "pending"


async def test_a_generating_or_ended_task_is_not_cancelled(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database
) -> None:
    first = await create(client, auth, "cancellable-model")
    second = await create(client, auth, "cancellable-model")
    store = TaskStore(db)
    [claimed] = await store.claim("w", limit=1, lease_s=30, models=["cancellable-model"])
    assert claimed.id == first["id"]
    polled = (await client.get(f"/v1/tasks/{first['id']}", headers=auth)).json()
    assert polled["task_info"]["can_cancel"] is False
    generating = await client.post(f"/v1/tasks/{first['id']}/cancel", headers=auth)
    assert_error(generating, 409, "task_not_cancellable", "invalid_request_error", None)
    assert "generating" in generating.json()["error"]["message"]
    await store.complete(Claim(claimed.id, claimed.attempt), [f"{claimed.id}/0.png"])
    ended = await client.post(f"/v1/tasks/{first['id']}/cancel", headers=auth)
    assert_error(ended, 409, "task_not_cancellable", "invalid_request_error", None)
    assert "completed" in ended.json()["error"]["message"]
    assert (await client.post(f"/v1/tasks/{second['id']}/cancel", headers=auth)).status_code == 200


async def test_another_accounts_task_cannot_be_cancelled(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database
) -> None:
    task = await create(client, auth, "cancellable-model")
    accounts = AccountStore(db)
    await accounts.create_account("mallory", credits_micro=PLENTY)
    _, other = await accounts.create_key("mallory")
    mallory = {"Authorization": f"Bearer {other}"}
    response = await client.post(f"/v1/tasks/{task['id']}/cancel", headers=mallory)
    assert_error(response, 403, "permission_denied", "invalid_request_error", None)
    bad = await client.post("/v1/tasks/nope/cancel", headers=auth)
    assert_error(bad, 400, "invalid_task_id", "invalid_request_error", "task_id")


async def test_the_list_pages_through_the_keys_tasks_newest_first(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database
) -> None:
    made = [(await create(client, auth, "cancellable-model"))["id"] for _ in range(5)]
    await client.post(f"/v1/tasks/{made[1]}/cancel", headers=auth)
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/tasks", params=params, headers=auth)).json()
        pages += 1
        assert page["object"] == "list" and len(page["data"]) <= 2
        seen += [task["id"] for task in page["data"]]
        assert page["has_more"] is (page["next_cursor"] is not None)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == made[::-1]
    failed = (await client.get("/v1/tasks?status=failed", headers=auth)).json()
    assert [task["id"] for task in failed["data"]] == [made[1]]
    assert failed["data"][0]["error"]["code"] == "request_cancelled"
    # Another key, even of the same account, lists only its own.
    _, same_account = await AccountStore(db).create_key("alice")
    theirs = await client.get("/v1/tasks", headers={"Authorization": f"Bearer {same_account}"})
    assert theirs.json() == {"object": "list", "data": [], "has_more": False, "next_cursor": None}


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("status=done", "status"),
        ("cursor=abc", "cursor"),
        ("cursor=" + "fGZvbw", "cursor"),  # "|foo": no time, no task id
    ],
)
async def test_a_bad_list_query_is_a_400_naming_it(
    client: httpx.AsyncClient, auth: dict[str, str], query: str, param: str
) -> None:
    response = await client.get(f"/v1/tasks?{query}", headers=auth)
    assert_error(response, 400, "invalid_request", "invalid_request_error", param)


async def test_a_pending_task_shows_its_place_in_the_queue(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database
) -> None:
    first, second, third = [await create(client, auth, "krea-2-turbo") for _ in range(3)]
    assert [t["task_info"]["queue_position"] for t in (first, second, third)] == [1, 2, 3]
    store = TaskStore(db)
    [claimed] = await store.claim("w", limit=1, lease_s=30, models=["krea-2-turbo"])
    assert claimed.id == first["id"]
    services = client._transport.app.state.services  # type: ignore[attr-defined]
    later = time.monotonic() + 60
    services.queue.monotonic = lambda: later  # the snapshot is read afresh, as a second later
    polled = {
        t["id"]: (await client.get(f"/v1/tasks/{t['id']}", headers=auth)).json()
        for t in (first, second, third)
    }
    assert "queue_position" not in polled[first["id"]]["task_info"]  # generating
    assert polled[second["id"]]["task_info"]["queue_position"] == 1
    assert polled[third["id"]]["task_info"]["queue_position"] == 2
