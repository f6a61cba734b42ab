"""Every invalid create request is a 400 (or 413/401) in the contract's shape, and changes nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from darkroom.db.database import Database
from darkroom.testing import FakeClock
from tests.helpers import assert_error, task_count

URL = "/v1/images/generations"
GOOD: dict[str, Any] = {"model": "krea-2-turbo", "prompt": "a red fox in the snow"}


INVALID_FIELDS = [
    ({"prompt": "x"}, "model"),
    ({"model": "krea-2-turbo"}, "prompt"),
    ({**GOOD, "model": "sdxl"}, "model"),
    ({**GOOD, "model": 7}, "model"),
    ({**GOOD, "prompt": ""}, "prompt"),
    ({**GOOD, "prompt": "   \n\t "}, "prompt"),
    ({**GOOD, "prompt": 42}, "prompt"),
    ({**GOOD, "prompt": None}, "prompt"),
    ({**GOOD, "size": "7:5"}, "size"),
    ({**GOOD, "size": "1024x1024"}, "size"),
    ({**GOOD, "size": 1}, "size"),
    ({**GOOD, "quality": "4K"}, "quality"),
    ({**GOOD, "quality": "1k"}, "quality"),
    ({**GOOD, "quality": 1}, "quality"),
    ({**GOOD, "seed": -1}, "seed"),
    ({**GOOD, "seed": 1_048_577}, "seed"),
    ({**GOOD, "seed": "5"}, "seed"),
    ({**GOOD, "seed": 1.5}, "seed"),
    ({**GOOD, "seed": True}, "seed"),
    ({**GOOD, "nsfw_check": "true"}, "nsfw_check"),
    ({**GOOD, "nsfw_check": 1}, "nsfw_check"),
    ({**GOOD, "callback_url": "http://example.com/hook"}, "callback_url"),
    ({**GOOD, "callback_url": "ftp://example.com/hook"}, "callback_url"),
    ({**GOOD, "callback_url": "https://127.0.0.1/hook"}, "callback_url"),
    ({**GOOD, "callback_url": "https://10.1.2.3/hook"}, "callback_url"),
    ({**GOOD, "callback_url": "https://localhost/hook"}, "callback_url"),
    ({**GOOD, "callback_url": "https://example.com/" + "a" * 2030}, "callback_url"),
    ({**GOOD, "callback_url": 5}, "callback_url"),
]


@pytest.mark.parametrize(("body", "param"), INVALID_FIELDS)
async def test_invalid_field_is_400_naming_it(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database, body: dict[str, Any], param: str
) -> None:
    response = await client.post(URL, json=body, headers=auth)
    assert_error(response, 400, "invalid_request", "invalid_request_error", param)
    assert param in response.json()["error"]["message"]
    assert await task_count(db) == 0


# Fields of other image APIs that would change the picture or its form: refused, never ignored
# (an ignored one charges for a picture other than the one asked for).
FOREIGN = [
    ({"n": 2}, "n", True),
    ({"n": 0}, "n", True),
    ({"n": True}, "n", True),
    ({"n": "1"}, "n", True),
    ({"response_format": "b64_json"}, "response_format", True),
    ({"output_format": "jpeg"}, "output_format", False),
    ({"negative_prompt": "blurry"}, "negative_prompt", False),
    ({"negative_prompt": ""}, "negative_prompt", False),
    ({"image_urls": ["https://example.com/a.png"]}, "image_urls", False),
    ({"image_url": "https://example.com/a.png"}, "image_url", False),
    ({"mask_url": "https://example.com/m.png"}, "mask_url", False),
    ({"width": 1024}, "width", False),
    ({"height": 1024}, "height", False),
    ({"num_inference_steps": 28}, "num_inference_steps", False),
    ({"steps": 28}, "steps", False),
    ({"guidance_scale": 4.5}, "guidance_scale", False),
    ({"guidance": 4.5}, "guidance", False),
    ({"style": "vivid"}, "style", False),
    ({"size": "1344x768"}, "size", True),
    ({"size": "1024 x 1024"}, "size", True),
]


@pytest.mark.parametrize(("extra", "param", "points_to_openai"), FOREIGN)
async def test_a_foreign_field_that_would_change_the_result_is_400_naming_it(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    db: Database,
    extra: dict[str, Any],
    param: str,
    points_to_openai: bool,
) -> None:
    response = await client.post(URL, json={**GOOD, **extra}, headers=auth)
    assert_error(response, 400, "invalid_request", "invalid_request_error", param)
    message = response.json()["error"]["message"]
    assert param in message
    assert ("/openai/v1" in message) is points_to_openai
    assert await task_count(db) == 0


@pytest.mark.parametrize(
    "agent", ["OpenAI/Python 3.63.0", "AsyncOpenAI/Python 2.8.0", "OpenAI/JS 6.1.0"]
)
async def test_the_openai_package_is_pointed_to_its_route_and_not_charged(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database, agent: str
) -> None:
    response = await client.post(URL, json=GOOD, headers={**auth, "User-Agent": agent})
    assert_error(response, 400, "invalid_request", "invalid_request_error", None)
    assert "http://testserver/openai/v1" in response.json()["error"]["message"]
    assert await task_count(db) == 0


@pytest.mark.parametrize(
    "extra",
    [
        {"n": 1},
        {"response_format": "url"},
        {"output_format": "png"},
        {"n": None, "negative_prompt": None, "width": None, "style": None},
        {"user": "someone", "temperature": 3},  # unknown fields that change nothing: ignored
    ],
)
async def test_a_foreign_field_at_a_value_that_changes_nothing_is_accepted(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database, extra: dict[str, Any]
) -> None:
    response = await client.post(URL, json={**GOOD, **extra}, headers=auth)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "pending"
    assert await task_count(db) == 1


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"",
        b"[1, 2]",
        b'"a string"',
        b"null",
        b"\xff\xfe",
        b'{"model": "krea-2-turbo",',
    ],
)
async def test_body_that_is_not_a_json_object_is_400(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database, raw: bytes
) -> None:
    headers = {**auth, "Content-Type": "application/json"}
    response = await client.post(URL, content=raw, headers=headers)
    assert_error(response, 400, "invalid_request", "invalid_request_error", None)
    assert await task_count(db) == 0


async def test_body_too_large_is_413(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database
) -> None:
    body = {**GOOD, "prompt": "x" * 70_000}
    response = await client.post(URL, json=body, headers=auth)
    assert_error(response, 413, "invalid_request", "invalid_request_error", None)
    assert await task_count(db) == 0


async def test_streamed_body_too_large_without_length_is_413(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(100):
            yield b"x" * 1024

    response = await client.post(URL, content=chunks(), headers=auth)
    assert_error(response, 413, "invalid_request", "invalid_request_error", None)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "dk-abc",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer dk-" + "A" * 43,
        "Bearer not-a-key-at-all",
    ],
)
async def test_missing_malformed_or_unknown_key_is_401(
    client: httpx.AsyncClient, db: Database, header: str | None
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = await client.post(URL, json=GOOD, headers=headers)
    assert_error(response, 401, "unauthorized", "authentication_error", None)
    assert await task_count(db) == 0


async def test_key_is_checked_before_the_body_is_read(client: httpx.AsyncClient) -> None:
    response = await client.post(URL, content=b"{not json", headers={"Authorization": "Bearer x"})
    assert response.status_code == 401


async def test_revoked_key_is_401(
    client: httpx.AsyncClient, db: Database, api_key: str, auth: dict[str, str]
) -> None:
    from darkroom.accounts.store import AccountStore

    store = AccountStore(db)
    keys = client._transport.app.state.services.keys  # type: ignore[attr-defined]
    keys.clock = clock = FakeClock()
    assert (await client.post(URL, json=GOOD, headers=auth)).status_code == 200
    [info] = await store.list_keys("alice")
    assert await store.revoke_key(info.id)
    clock.advance(keys.ttl_s + 0.1)  # the documented bound (DARKROOM_KEY_CACHE_S)
    response = await client.post(URL, json=GOOD, headers=auth)
    assert_error(response, 401, "unauthorized", "authentication_error", None)
    assert await task_count(db) == 1


async def test_unexpected_failure_is_500_without_a_trace(
    client: httpx.AsyncClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = client._transport.app.state.services  # type: ignore[attr-defined]

    async def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("database on fire at /secret/path")

    monkeypatch.setattr(services.tasks, "create_many", broken)
    response = await client.post(URL, json=GOOD, headers=auth)
    assert_error(response, 500, "internal_error", "api_error", None)
    assert "secret" not in response.text


async def test_unknown_headers_are_ignored(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    headers = {**auth, "X-EvoLink-Source": "sdk", "X-Anything": "1"}
    assert (await client.post(URL, json=GOOD, headers=headers)).status_code == 200


async def test_unknown_route_is_contract_shaped_404(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await client.get("/v1/nothing-here", headers=auth)
    assert response.status_code == 404
    assert set(response.json()["error"]) >= {"code", "message", "type"}


async def test_guessing_keys_is_limited_per_address_without_database_reads(
    client: httpx.AsyncClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its failed authentications an address gets 429 with Retry-After, and its made-up
    keys cost no more database reads; a key the process knows to be live still works."""
    services = client._transport.app.state.services  # type: ignore[attr-defined]
    assert (await client.get("/v1/credits", headers=auth)).status_code == 200  # known live
    limit = services.failed_auths.limit
    reads = 0
    real = services.accounts.authenticate

    async def counted(key: str) -> Any:
        nonlocal reads
        reads += 1
        return await real(key)

    monkeypatch.setattr(services.accounts, "authenticate", counted)
    guesses = [f"dk-{i:043d}" for i in range(limit + 20)]
    codes = []
    for guess in guesses:
        response = await client.get("/v1/credits", headers={"Authorization": f"Bearer {guess}"})
        codes.append(response.status_code)
    assert codes == [401] * limit + [429] * 20
    assert reads == limit
    refused = await client.get("/v1/credits", headers={"Authorization": f"Bearer {guesses[0]}"})
    assert_error(refused, 429, "rate_limit_exceeded", "rate_limit_error", None)
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert (await client.get("/v1/credits", headers=auth)).status_code == 200
