"""Credits: reserve at create, capture on completion, release on failure; never twice, never < 0."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from darkroom.accounts.store import AccountStore
from darkroom.billing import ledger as ledger_ops
from darkroom.billing.money import to_credits, to_micro
from darkroom.clock import utcnow
from darkroom.contract import FailureCode
from darkroom.db.database import Database
from darkroom.db.schema import ledger, tasks
from darkroom.tasks.model import Claim
from darkroom.tasks.outbox import Outbox
from darkroom.tasks.retention import TaskRetention
from darkroom.tasks.store import TaskStore
from tests.helpers import assert_error, balance, funded_key, task_count

# The SQL or the locking under test differs by backend.
pytestmark = pytest.mark.each_database

URL = "/v1/images/generations"
BODY: dict[str, Any] = {"model": "krea-2-turbo", "prompt": "a lighthouse"}
PRICE_1K = to_micro(0.45)
PRICE_2K = to_micro(1.8)
MODELS = ["krea-2-turbo"]


async def ledger_kinds(db: Database, task_id: str) -> list[str]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            select(ledger.c.kind).where(ledger.c.task_id == task_id).order_by(ledger.c.id)
        )
        return list(rows.scalars())


def test_prices_convert_exactly() -> None:
    assert to_micro(0.45) == 450_000
    assert to_micro(1.8) == 1_800_000
    assert to_micro("0.1") * 3 == to_micro(0.3)
    assert to_credits(450_000) == 0.45
    assert to_credits(to_micro(1095.4)) == 1095.4


async def test_create_reserves_the_price(client: httpx.AsyncClient, db: Database) -> None:
    auth, _ = await funded_key(db, "payer", 10)
    made = await client.post(URL, json={**BODY, "quality": "2K"}, headers=auth)
    assert made.status_code == 200, made.text
    assert made.json()["usage"] == {
        "billing_rule": "per_call",
        "credits_reserved": 1.8,
        "user_group": "pro",
    }
    assert await balance(db, "payer") == (to_micro(10) - PRICE_2K, 0)
    assert await ledger_kinds(db, made.json()["id"]) == ["reserve"]


async def test_concurrent_creates_never_overdraw(client: httpx.AsyncClient, db: Database) -> None:
    """Balance for exactly k tasks, many at once: k succeed, the rest get 402, balance exact."""
    k, attempts = 7, 24
    auth, _ = await funded_key(db, "exact", k * 0.45 + 0.2)  # 0.2 left: less than one more
    responses = await asyncio.gather(
        *(client.post(URL, json=BODY, headers=auth) for _ in range(attempts))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * k + [402] * (attempts - k)
    for refused in (r for r in responses if r.status_code == 402):
        assert_error(refused, 402, "insufficient_quota", "insufficient_quota", None)
    assert await balance(db, "exact") == (to_micro(0.2), 0)
    assert await task_count(db) == k
    async with db.engine.connect() as conn:
        reserves = (
            await conn.execute(select(func.count()).where(ledger.c.kind == "reserve"))
        ).scalar_one()
    assert reserves == k


async def test_key_credit_limit_is_402_and_changes_nothing(
    client: httpx.AsyncClient, db: Database
) -> None:
    auth, _ = await funded_key(db, "rich", 100, limit=1.0)
    assert (await client.post(URL, json=BODY, headers=auth)).status_code == 200
    assert (await client.post(URL, json=BODY, headers=auth)).status_code == 200
    refused = await client.post(URL, json=BODY, headers=auth)  # 0.9 spent of 1.0
    assert_error(refused, 402, "insufficient_quota", "insufficient_quota", None)
    assert "key" in refused.json()["error"]["message"]
    assert await balance(db, "rich") == (to_micro(100) - 2 * PRICE_1K, 0)
    assert await task_count(db) == 2


async def test_empty_account_is_402(client: httpx.AsyncClient, db: Database) -> None:
    auth, _ = await funded_key(db, "broke", 0.44)
    refused = await client.post(URL, json=BODY, headers=auth)
    assert_error(refused, 402, "insufficient_quota", "insufficient_quota", None)
    assert await balance(db, "broke") == (to_micro(0.44), 0)
    assert await task_count(db) == 0


async def _one_task(client: httpx.AsyncClient, auth: dict[str, str], **extra: Any) -> str:
    made = await client.post(URL, json={**BODY, **extra}, headers=auth)
    assert made.status_code == 200, made.text
    task_id: str = made.json()["id"]
    return task_id


@pytest.mark.parametrize("code", list(FailureCode))
async def test_failed_task_costs_nothing(
    client: httpx.AsyncClient, db: Database, code: FailureCode
) -> None:
    auth, _ = await funded_key(db, "f", 5)
    task_id = await _one_task(client, auth)
    store = TaskStore(db)
    [task] = await store.claim("w", limit=1, lease_s=30, models=MODELS)
    assert await store.fail(Claim(task.id, task.attempt), code, "no")
    assert await balance(db, "f") == (to_micro(5), 0)
    assert await ledger_kinds(db, task_id) == ["reserve", "release"]
    polled = (await client.get(f"/v1/tasks/{task_id}", headers=auth)).json()
    assert "credits_used" not in polled["usage"]


async def test_rescuer_failing_a_lost_task_refunds_it(
    client: httpx.AsyncClient, db: Database
) -> None:
    auth, _ = await funded_key(db, "lost", 5)
    task_id = await _one_task(client, auth)
    store = TaskStore(db)
    await store.claim("w", limit=1, lease_s=30, models=MODELS)
    async with db.transaction() as conn:
        await conn.execute(
            update(tasks).values(lease_expires_at=utcnow() - timedelta(seconds=1), attempt=3)
        )
    rescued = await store.rescue_expired(max_attempts=3)
    assert rescued.failed == (task_id,)
    assert await balance(db, "lost") == (to_micro(5), 0)
    assert await ledger_kinds(db, task_id) == ["reserve", "release"]


async def test_completed_task_is_charged_once_after_a_crashed_attempt(
    client: httpx.AsyncClient, db: Database
) -> None:
    auth, _ = await funded_key(db, "c", 5)
    task_id = await _one_task(client, auth, quality="2K")
    store = TaskStore(db)
    [first] = await store.claim("crashed", limit=1, lease_s=30, models=MODELS)
    async with db.transaction() as conn:  # the first worker died: its lease runs out
        await conn.execute(update(tasks).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert (await store.rescue_expired(max_attempts=3)).requeued == (task_id,)
    [second] = await store.claim("healthy", limit=1, lease_s=30, models=MODELS)
    assert second.attempt == 2
    assert await store.complete(Claim(task_id, 2), ["k.png"])
    # The first worker comes back to life and tries to finish too: fenced out, no charge.
    assert not await store.complete(Claim(task_id, first.attempt), ["k.png"])
    assert not await store.fail(Claim(task_id, first.attempt), FailureCode.SERVICE_ERROR, "x")
    assert await balance(db, "c") == (to_micro(5) - PRICE_2K, PRICE_2K)
    assert await ledger_kinds(db, task_id) == ["reserve", "capture"]
    polled = (await client.get(f"/v1/tasks/{task_id}", headers=auth)).json()
    assert polled["usage"]["credits_used"] == 1.8


async def test_ledger_refuses_a_second_settlement(client: httpx.AsyncClient, db: Database) -> None:
    """The constraint, not the fence, is the last line: settling twice fails the transaction."""
    auth, _ = await funded_key(db, "twice", 5)
    task_id = await _one_task(client, auth)
    store = TaskStore(db)
    [task] = await store.claim("w", limit=1, lease_s=30, models=MODELS)
    assert await store.complete(Claim(task.id, task.attempt), ["k.png"])
    for capture in (True, False):
        with pytest.raises(IntegrityError):
            await db.write(
                lambda conn, capture=capture: ledger_ops.settle(
                    conn, task_id, capture=capture, now=utcnow()
                )
            )
    assert await balance(db, "twice") == (to_micro(5) - PRICE_1K, PRICE_1K)


async def test_idempotency_key_replays_and_charges_once(
    client: httpx.AsyncClient, db: Database
) -> None:
    auth, _ = await funded_key(db, "idem", 5)
    headers = {**auth, "Idempotency-Key": "order-42"}
    first = await client.post(URL, json=BODY, headers=headers)
    # Same body, other key order and spacing: the same request.
    again = await client.post(
        URL,
        content=b'{ "prompt": "a lighthouse",  "model": "krea-2-turbo" }',
        headers={**headers, "Content-Type": "application/json"},
    )
    assert first.status_code == again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert "idempotency_replayed" not in first.json()
    assert again.json()["idempotency_replayed"] is True  # as the hosted API flags a replay
    assert await task_count(db) == 1
    assert await balance(db, "idem") == (to_micro(5) - PRICE_1K, 0)
    other_body = await client.post(URL, json={**BODY, "prompt": "a ship"}, headers=headers)
    assert_error(other_body, 400, "invalid_request", "invalid_request_error", "Idempotency-Key")
    # Another key is another request.
    fresh = await client.post(URL, json=BODY, headers={**auth, "Idempotency-Key": "order-43"})
    assert fresh.json()["id"] != first.json()["id"]
    assert await balance(db, "idem") == (to_micro(5) - 2 * PRICE_1K, 0)


async def test_concurrent_retries_with_one_idempotency_key(
    client: httpx.AsyncClient, db: Database
) -> None:
    auth, _ = await funded_key(db, "race", 5)
    headers = {**auth, "Idempotency-Key": "same"}
    responses = await asyncio.gather(
        *(client.post(URL, json=BODY, headers=headers) for _ in range(8))
    )
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["id"] for r in responses}) == 1
    assert await task_count(db) == 1
    assert await balance(db, "race") == (to_micro(5) - PRICE_1K, 0)


@pytest.mark.parametrize("bad", ["", "x" * 256, "tab\there"])
async def test_malformed_idempotency_key_is_400(
    client: httpx.AsyncClient, db: Database, bad: str
) -> None:
    auth, _ = await funded_key(db, "bad", 5)
    refused = await client.post(URL, json=BODY, headers={**auth, "Idempotency-Key": bad})
    assert_error(refused, 400, "invalid_request", "invalid_request_error", "Idempotency-Key")
    assert await task_count(db) == 0


async def test_get_credits_for_limited_and_unlimited_keys(
    client: httpx.AsyncClient, db: Database
) -> None:
    limited, _ = await funded_key(db, "shop", 1096.75, limit=100)
    unlimited, _ = await funded_key(db, "shop", 0)
    task_id = await _one_task(client, limited)
    await _one_task(client, unlimited, quality="2K")  # reserved, not used yet
    store = TaskStore(db)
    claimed = await store.claim("w", limit=1, lease_s=30, models=MODELS)
    assert [t.id for t in claimed] == [task_id]
    assert await store.complete(Claim(task_id, 1), ["k.png"])

    body = (await client.get("/v1/credits", headers=limited)).json()
    assert body == {
        "success": True,
        "message": "",
        "data": {
            "token": {"remaining_credits": 99.55, "unlimited_credits": False, "used_credits": 0.45},
            "user": {"remaining_credits": 1094.5, "used_credits": 0.45},
        },
    }
    body = (await client.get("/v1/credits", headers=unlimited)).json()
    assert body["data"] == {
        "token": {"remaining_credits": 1094.5, "unlimited_credits": True, "used_credits": 0},
        "user": {"remaining_credits": 1094.5, "used_credits": 0.45},
    }
    for value in (*body["data"]["token"].values(), *body["data"]["user"].values()):
        assert isinstance(value, (int, float))


async def test_get_credits_needs_a_live_key(client: httpx.AsyncClient, db: Database) -> None:
    assert_error(await client.get("/v1/credits"), 401, "unauthorized", "authentication_error", None)
    store = AccountStore(db)
    await store.create_account("gone")
    info, key = await store.create_key("gone")
    assert await store.revoke_key(info.id)
    response = await client.get("/v1/credits", headers={"Authorization": f"Bearer {key}"})
    assert_error(response, 401, "unauthorized", "authentication_error", None)


async def test_balance_changes_by_operators(db: Database) -> None:
    store = AccountStore(db)
    await store.create_account("ops", credits_micro=to_micro(1))
    assert (await store.change_balance("ops", add_micro=to_micro(2.5))).balance_micro == 3_500_000
    assert (await store.change_balance("ops", set_micro=to_micro(0.5))).balance_micro == 500_000
    with pytest.raises(ValueError, match="negative"):
        await store.change_balance("ops", add_micro=-to_micro(0.6))
    assert (await store.get_account("ops")).balance_micro == 500_000
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(ledger.c.kind, ledger.c.amount_micro))).all()
    assert [(r.kind, r.amount_micro) for r in rows] == [
        ("credit", 1_000_000),
        ("credit", 2_500_000),
        ("debit", 3_000_000),
    ]


async def test_idempotency_keys_are_forgotten_after_their_window(
    client: httpx.AsyncClient, db: Database
) -> None:
    auth, _ = await funded_key(db, "window", 5)
    headers = {**auth, "Idempotency-Key": "k"}
    first = (await client.post(URL, json=BODY, headers=headers)).json()["id"]
    retention = TaskRetention(db)
    assert await retention.forget_idempotency_keys_before(age_s=3600) == 0
    assert await retention.forget_idempotency_keys_before(age_s=-1) == 1
    second = (await client.post(URL, json=BODY, headers=headers)).json()["id"]
    assert second != first


async def test_cancelling_refunds_and_fences_out_the_worker(
    client: httpx.AsyncClient, db: Database
) -> None:
    auth, _ = await funded_key(db, "cancel", 5)
    pending = await _one_task(client, auth, callback_url="https://hooks.example.com/a")
    running = await _one_task(client, auth, quality="2K")
    store = TaskStore(db)
    assert await store.cancel(pending)
    [claimed] = await store.claim("w", limit=1, lease_s=30, models=MODELS)
    assert claimed.id == running  # the cancelled one is never claimed
    assert await store.cancel(running, "no longer needed")
    assert not await store.complete(Claim(running, claimed.attempt), ["x.png"])  # fenced out
    assert not await store.cancel(running)  # already ended
    assert await balance(db, "cancel") == (to_micro(5), 0)
    for task_id in (pending, running):
        assert await ledger_kinds(db, task_id) == ["reserve", "release"]
        error = (await client.get(f"/v1/tasks/{task_id}", headers=auth)).json()["error"]
        assert error["code"] == "request_cancelled"
    assert (await Outbox(db).states([pending]))[pending][0] == "pending"  # its callback fires


async def test_creates_and_completions_of_one_key_never_deadlock(
    client: httpx.AsyncClient, db: Database
) -> None:
    """Both lock the key row and the account row; in opposite orders PostgreSQL would abort one.
    (The key may hold all 20 at once: which commits first is the race under test, and the
    concurrency limit is not.)"""
    auth, _ = await funded_key(db, "busy", 100, max_concurrent=20)
    for _ in range(10):
        await _one_task(client, auth)
    store = TaskStore(db)
    claimed = await store.claim("w", limit=10, lease_s=30, models=MODELS)
    assert len(claimed) == 10
    results = await asyncio.gather(
        *(store.complete(Claim(t.id, t.attempt), ["k.png"]) for t in claimed),
        *(client.post(URL, json=BODY, headers=auth) for _ in range(10)),
    )
    assert results[:10] == [True] * 10
    assert [r.status_code for r in results[10:]] == [200] * 10
    assert await balance(db, "busy") == (to_micro(100) - 20 * PRICE_1K, 10 * PRICE_1K)


async def test_a_replay_shows_the_task_as_it_stands(
    client: httpx.AsyncClient, db: Database
) -> None:
    auth, _ = await funded_key(db, "later", 5)
    headers = {**auth, "Idempotency-Key": "k-done"}
    first = (await client.post(URL, json=BODY, headers=headers)).json()
    store = TaskStore(db)
    [task] = await store.claim("w", limit=1, lease_s=30, models=MODELS)
    assert await store.complete(Claim(task.id, task.attempt), [f"{task.id}/0.png"])
    again = (await client.post(URL, json=BODY, headers=headers)).json()
    polled = (await client.get(f"/v1/tasks/{first['id']}", headers=auth)).json()
    assert again == polled | {"idempotency_replayed": True}  # the poll's body, flagged
    assert again["status"] == "completed" and len(again["results"]) == 1
    assert await balance(db, "later") == (to_micro(5) - PRICE_1K, PRICE_1K)
