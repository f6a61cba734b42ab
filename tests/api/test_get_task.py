"""Querying tasks: the contract's errors and the shape of each state."""

from __future__ import annotations

import httpx

from darkroom.accounts.store import AccountStore
from darkroom.db.database import Database
from darkroom.tasks.model import Claim
from darkroom.tasks.store import TaskStore
from tests.helpers import assert_error

CREATE = "/v1/images/generations"


async def create(client: httpx.AsyncClient, auth: dict[str, str]) -> str:
    response = await client.post(
        CREATE, json={"model": "krea-2-turbo", "prompt": "p"}, headers=auth
    )
    assert response.status_code == 200, response.text
    task_id: str = response.json()["id"]
    return task_id


async def test_bad_task_id_format_is_400(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    for bad in ("abc", "task-123", "TASK-UNIFIED-1-abcdefgh", "1751280000"):
        response = await client.get(f"/v1/tasks/{bad}", headers=auth)
        assert_error(response, 400, "invalid_task_id", "invalid_request_error", "task_id")
        assert response.json()["error"]["message"] == (
            "Invalid task ID format, must start with 'task-unified-'"
        )


async def test_unknown_task_is_404(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    for unknown in ("task-unified-1751280000-k2t9x8a3", "task-unified-whatever"):
        response = await client.get(f"/v1/tasks/{unknown}", headers=auth)
        assert_error(response, 404, "task_not_found", "invalid_request_error", None)


async def test_query_needs_a_key(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    task_id = await create(client, auth)
    response = await client.get(f"/v1/tasks/{task_id}")
    assert_error(response, 401, "unauthorized", "authentication_error", None)
    response = await client.get(f"/v1/tasks/{task_id}", headers={"Authorization": "Bearer nope"})
    assert_error(response, 401, "unauthorized", "authentication_error", None)


async def test_another_accounts_task_is_403(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database
) -> None:
    task_id = await create(client, auth)
    store = AccountStore(db)
    await store.create_account("mallory")
    _, other = await store.create_key("mallory")
    response = await client.get(
        f"/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {other}"}
    )
    assert_error(response, 403, "permission_denied", "invalid_request_error", None)
    # A second key of the same account may read it.
    _, same = await store.create_key("alice")
    ok = await client.get(f"/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {same}"})
    assert ok.status_code == 200


async def test_states_render_as_the_contract_says(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database
) -> None:
    store = TaskStore(db)
    done_id, failed_id = await create(client, auth), await create(client, auth)

    pending = (await client.get(f"/v1/tasks/{done_id}", headers=auth)).json()
    assert pending["status"] == "pending" and "results" not in pending and "error" not in pending
    assert pending["task_info"]["estimated_time"] >= 1

    claimed = await store.claim("w1", limit=2, lease_s=30, models=["krea-2-turbo"])
    assert {t.id for t in claimed} == {done_id, failed_id}
    by_id = {t.id: t for t in claimed}
    await store.set_progress({Claim(done_id, by_id[done_id].attempt): 40})
    processing = (await client.get(f"/v1/tasks/{done_id}", headers=auth)).json()
    assert processing["status"] == "processing" and processing["progress"] == 40
    assert processing["task_info"]["estimated_time"] >= 1

    assert await store.complete(Claim(done_id, by_id[done_id].attempt), [f"{done_id}/0.png"])
    completed = (await client.get(f"/v1/tasks/{done_id}", headers=auth)).json()
    assert completed["status"] == "completed" and completed["progress"] == 100
    assert "estimated_time" not in completed["task_info"]
    assert len(completed["results"]) == 1
    assert completed["results"][0].startswith("http://testserver/v1/files/")
    link = completed["results"][0]
    assert completed["result_data"] == [{"url": link, "image_url": link}]
    assert completed["usage"]["credits_used"] == 0.45
    assert isinstance(completed["duration"], int)

    from darkroom.contract import FailureCode

    assert await store.fail(
        Claim(failed_id, by_id[failed_id].attempt), FailureCode.GENERATION_TIMEOUT, "too slow"
    )
    failed = (await client.get(f"/v1/tasks/{failed_id}", headers=auth)).json()
    assert failed["status"] == "failed"
    assert failed["error"] == {
        "code": "generation_timeout",
        "message": "too slow",
        "type": "task_error",
    }
    assert "results" not in failed and "credits_used" not in failed["usage"]
