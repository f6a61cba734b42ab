"""The Python SDK against a real `darkroom serve` over HTTP: the flow a user writes, every
refusal as its typed error, retries that never charge twice, and signed callbacks checked."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from darkroom.accounts.store import AccountStore
from darkroom.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    ContentPolicyViolation,
    InsufficientQuota,
    InvalidSignature,
    RateLimited,
    Task,
    TaskNotCancellable,
    verify_callback,
)
from tests.client.conftest import Server, one_task_generating
from tests.conftest import on_database
from tests.e2e.procs import cli, create_key, pause_after_first_step, release_once_midway


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


def test_generate_wait_download(server: Server, tmp_path: Path) -> None:
    seen: list[Task] = []
    pause = pause_after_first_step(server.env)  # held at its first step until seen there
    release = release_once_midway(pause)

    def on_progress(task: Task) -> None:
        seen.append(task)
        release(task.progress)

    with Client(server.key, base_url=server.url) as client:
        task = client.images.generate("a lighthouse at dusk", size="16:9", seed=42)
        assert task.status == "pending" and task.seed == 42 and task.estimated_time
        done = client.tasks.wait(task.id, on_progress=on_progress)
        path = client.tasks.download(done, tmp_path)
    assert done.status == "completed" and done.progress == 100
    assert path == tmp_path / f"{task.id}.png"
    assert png_size(path.read_bytes()) == (1344, 768)
    progress = [t.progress for t in seen]
    assert progress == sorted(progress) and progress[-1] == 100
    assert any(0 < p < 100 for p in progress), progress  # live, from the events stream


async def test_the_async_client_does_the_same(server: Server, tmp_path: Path) -> None:
    async with AsyncClient(server.key, base_url=server.url) as client:
        task = await client.images.generate("a red fox in snow", size="3:4")
        path = await client.tasks.download(task.id, tmp_path / "fox.png")  # waits first
        credits = await client.credits()
    assert png_size(path.read_bytes()) == (896, 1152)
    assert credits["success"] is True


def test_polling_where_the_server_has_no_stream(server: Server) -> None:
    """The hosted API has no events endpoint: the client falls back to polling."""

    real = httpx.HTTPTransport()

    def no_events(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            body = {"error": {"code": "not_found", "message": "no", "type": "x"}}
            return httpx.Response(404, json=body)
        return real.handle_request(request)

    seen: list[Task] = []
    transport = httpx.MockTransport(no_events)
    with real, Client(server.key, base_url=server.url, transport=transport) as client:
        task = client.images.generate("a quiet harbour")
        done = client.tasks.wait(task.id, on_progress=seen.append)
    assert done.status == "completed" and seen[-1].status == "completed"


def test_refusals_are_typed_errors(server: Server) -> None:
    broke = cli(
        server.env,
        "keys",
        "create",
        "--account",
        "broke",
        "--create-account",
        "--credit-limit",
        "0",
    ).stdout.splitlines()[-1]
    with Client(broke, base_url=server.url) as client, pytest.raises(InsufficientQuota) as quota:
        client.images.generate("a lighthouse")
    assert quota.value.status == 402 and quota.value.code == "insufficient_quota"
    assert quota.value.request_id

    with (
        Client(server.key, base_url=server.url) as client,
        pytest.raises(ContentPolicyViolation) as refused,
    ):
        client.images.generate("pedophilia")
    assert refused.value.status == 400 and refused.value.param == "prompt"

    revoked = create_key(server.env, "gone")
    principal = on_database(
        server.env["DARKROOM_DATABASE_URL"], lambda db: AccountStore(db).authenticate(revoked)
    )
    assert principal is not None
    cli(server.env, "keys", "revoke", str(principal.key_id))  # before its first use: no cache
    with Client(revoked, base_url=server.url) as client, pytest.raises(AuthenticationError) as auth:
        client.credits()
    assert auth.value.status == 401 and auth.value.code == "unauthorized"


def test_cancel_and_list(server: Server) -> None:
    with one_task_generating(server) as generating, Client(server.key, base_url=server.url) as c:
        waiting = c.images.generate("a task that will not be made")
        assert waiting.can_cancel and waiting.queue_position is not None
        # Next in line, once this process's view of the queue (read at most 1 s ago, when the
        # held task still waited) is read again.
        deadline = time.monotonic() + 10
        while c.tasks.get(waiting.id).queue_position != 1:
            assert time.monotonic() < deadline, "the queue position never came to 1"
            time.sleep(0.1)
        cancelled = c.tasks.cancel(waiting.id)
        assert cancelled.status == "failed" and cancelled.error is not None
        assert cancelled.error["code"] == "request_cancelled"
        with pytest.raises(TaskNotCancellable) as busy:
            c.tasks.cancel(generating)
        assert busy.value.status == 409
        page = c.tasks.list(limit=1)
        assert [t.id for t in page.tasks] == [waiting.id] and page.next_cursor
        following = c.tasks.list(limit=1, cursor=page.next_cursor)
        assert [t.id for t in following.tasks] == [generating]
        assert c.tasks.list(status="failed", limit=100).tasks[0].id == waiting.id


async def test_the_async_client_cancels_and_lists_too(server: Server) -> None:
    with one_task_generating(server):
        async with AsyncClient(server.key, base_url=server.url) as client:
            waiting = await client.images.generate("another task that will not be made")
            assert (await client.tasks.cancel(waiting.id)).status == "failed"
            page = await client.tasks.list(status="failed", limit=1)
            assert [t.id for t in page.tasks] == [waiting.id]


def limited_key(server: Server) -> str:
    return cli(
        server.env, "keys", "create", "--account", "sdk", "--rate-limit", "2/second"
    ).stdout.splitlines()[-1]


def test_rate_limits_are_waited_out_or_raised(server: Server) -> None:
    limited = limited_key(server)
    statuses: list[int] = []
    real = httpx.HTTPTransport()

    def counting(request: httpx.Request) -> httpx.Response:
        response = real.handle_request(request)
        statuses.append(response.status_code)
        return response

    transport = httpx.MockTransport(counting)
    with real, Client(limited, base_url=server.url, transport=transport) as client:
        for _ in range(3):
            client.images.generate("a paper boat")
    assert 429 in statuses and statuses[-1] == 200  # waited for Retry-After, then got in
    with Client(limited_key(server), base_url=server.url, retry_rate_limited=False) as client:
        client.images.generate("a paper boat")
        client.images.generate("a paper boat")
        with pytest.raises(RateLimited) as limit:
            client.images.generate("a paper boat")
    assert limit.value.status == 429 and limit.value.retry_after and limit.value.retry_after >= 1


def test_a_create_whose_answer_is_lost_is_retried_and_charged_once(server: Server) -> None:
    key = create_key(server.env, "flaky")
    sent: list[str] = []
    real = httpx.HTTPTransport()

    def drops_the_first_answer(request: httpx.Request) -> httpx.Response:
        response = real.handle_request(request)  # the server did the work...
        response.read()
        if request.method == "POST" and not sent:
            sent.append(request.headers["idempotency-key"])
            raise httpx.ReadError("connection reset", request=request)  # ...the answer is lost
        if request.method == "POST":
            sent.append(request.headers["idempotency-key"])
        return response

    transport = httpx.MockTransport(drops_the_first_answer)
    with real, Client(key, base_url=server.url, transport=transport) as client:
        before = client.credits()["data"]["user"]["used_credits"]
        task = client.images.generate("a lighthouse at dawn")
        reserved = task.raw["usage"]["credits_reserved"]
        assert task.raw.get("idempotency_replayed") is True
        client.tasks.wait(task.id)
        after = client.credits()["data"]["user"]["used_credits"]
    assert len(sent) == 2 and sent[0] == sent[1]  # the same key both times
    assert after - before == pytest.approx(reserved)  # one charge


def test_verify_callback_accepts_the_servers_and_refuses_a_forgery(server: Server) -> None:
    secret = cli(server.env, "accounts", "webhook-secret", "sdk").stdout.strip().splitlines()[-1]
    url = server.receiver.url("127.0.0.1", "/sdk-hook")
    before = server.receiver.count()
    with Client(server.key, base_url=server.url) as client:
        task = client.images.generate("a kite over a beach", callback_url=url)
        client.tasks.wait(task.id)
    [hook] = server.receiver.wait_for(before + 1)[before:]
    body = verify_callback(hook.headers, hook.body, secret)
    assert body["id"] == task.id and body["status"] == "completed"
    tampered = hook.body.replace(b'"completed"', b'"failed"')
    with pytest.raises(InvalidSignature):
        verify_callback(hook.headers, tampered, secret)
    with pytest.raises(InvalidSignature):
        verify_callback(hook.headers, hook.body, "whsec_" + "A" * 43)


def test_the_sdk_imports_without_the_engine() -> None:
    """`darkroom.client` needs httpx and the contract's words, never torch or diffusers."""
    import subprocess
    import sys

    code = (
        "import sys; import darkroom.client, darkroom.client_command; "
        "bad = {m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'diffusers', 'transformers', 'sqlalchemy', 'fastapi')}; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
