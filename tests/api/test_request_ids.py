"""Every response names its request in `x-request-id`, and the request's logs carry it."""

from __future__ import annotations

import re

import httpx
import structlog

from darkroom.api.request_id import RequestIdMiddleware


async def test_a_response_carries_a_new_id_or_the_clients_own(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    fresh = [(await client.get("/v1/credits", headers=auth)).headers["x-request-id"] for _ in "ab"]
    assert all(re.fullmatch(r"req_[0-9a-f]{24}", rid) for rid in fresh)
    assert fresh[0] != fresh[1]
    echoed = await client.get("/v1/credits", headers={**auth, "X-Request-Id": "client-7f3a"})
    assert echoed.headers["x-request-id"] == "client-7f3a"
    error = await client.get("/v1/tasks/nope", headers={**auth, "X-Request-Id": "client-err"})
    assert error.status_code == 400 and error.headers["x-request-id"] == "client-err"
    # An id that could forge log lines or headers is replaced, not echoed.
    forged = await client.get("/v1/credits", headers={**auth, "X-Request-Id": "a b" + "x" * 200})
    assert forged.headers["x-request-id"].startswith("req_")


async def test_the_requests_logs_carry_its_id() -> None:
    seen: list[object] = []

    async def app(scope: object, receive: object, send: object) -> None:
        seen.append(structlog.contextvars.get_contextvars().get("request_id"))
        await send({"type": "http.response.start", "status": 204, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    transport = httpx.ASGITransport(app=RequestIdMiddleware(app))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        answer = await c.get("/", headers={"x-request-id": "trace-1"})
    assert seen == ["trace-1"] and answer.headers["x-request-id"] == "trace-1"
    assert "request_id" not in structlog.contextvars.get_contextvars()  # unbound afterwards
