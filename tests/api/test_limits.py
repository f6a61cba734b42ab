"""Model access (403) and per-key limits (429 with Retry-After), before anything is stored."""

from __future__ import annotations

import httpx

from darkroom.accounts.store import AccountStore, KeyLimits
from darkroom.db.database import Database
from tests.conftest import PLENTY
from tests.helpers import assert_error, task_count

URL = "/v1/images/generations"
BODY = {"model": "krea-2-turbo", "prompt": "p"}


async def key_with(db: Database, limits: KeyLimits) -> dict[str, str]:
    store = AccountStore(db)
    if await store.get_account("limited") is None:
        await store.create_account("limited", credits_micro=PLENTY)
    _, key = await store.create_key("limited", limits=limits)
    return {"Authorization": f"Bearer {key}"}


async def test_key_without_the_model_is_403(client: httpx.AsyncClient, db: Database) -> None:
    auth = await key_with(db, KeyLimits(allowed_models=("some-other-model",)))
    response = await client.post(URL, json=BODY, headers=auth)
    assert_error(response, 403, "model_access_denied", "invalid_request_error", None)
    assert response.json()["error"]["message"] == (
        "Token does not have access to model: krea-2-turbo"
    )
    assert await task_count(db) == 0
    allowed = await key_with(db, KeyLimits(allowed_models=("krea-2-turbo",)))
    assert (await client.post(URL, json=BODY, headers=allowed)).status_code == 200


async def test_burst_over_the_rate_is_429_with_retry_after(
    client: httpx.AsyncClient, db: Database
) -> None:
    auth = await key_with(db, KeyLimits(rate_limit="3/minute"))
    for remaining in (2, 1, 0):
        ok = await client.post(URL, json=BODY, headers=auth)
        assert ok.status_code == 200
        assert ok.headers["X-RateLimit-Limit"] == "3"
        assert ok.headers["X-RateLimit-Remaining"] == str(remaining)
    refused = await client.post(URL, json=BODY, headers=auth)
    assert_error(refused, 429, "rate_limit_exceeded", "rate_limit_error", None)
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert await task_count(db) == 3
    # Polling is counted apart: the key can still read its tasks.
    other = await client.get("/v1/tasks/task-unified-1-abcdefgh", headers=auth)
    assert other.status_code == 404


async def test_cap_on_unfinished_tasks_is_429(client: httpx.AsyncClient, db: Database) -> None:
    auth = await key_with(db, KeyLimits(max_concurrent=2))
    assert (await client.post(URL, json=BODY, headers=auth)).status_code == 200
    assert (await client.post(URL, json=BODY, headers=auth)).status_code == 200
    refused = await client.post(URL, json=BODY, headers=auth)
    assert_error(refused, 429, "rate_limit_exceeded", "rate_limit_error", None)
    assert int(refused.headers["Retry-After"]) >= 1
    assert await task_count(db) == 2


async def test_limits_are_checked_before_the_body(client: httpx.AsyncClient, db: Database) -> None:
    auth = await key_with(db, KeyLimits(rate_limit="1/minute"))
    assert (await client.post(URL, json=BODY, headers=auth)).status_code == 200
    refused = await client.post(URL, content=b"{broken", headers=auth)
    assert refused.status_code == 429
