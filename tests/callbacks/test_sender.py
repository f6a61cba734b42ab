"""The callback sender against a real HTTPS receiver on loopback (trustme certificates)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from darkroom.accounts.store import AccountStore
from darkroom.api.services import Services
from darkroom.callbacks.sender import CallbackSender, SenderPolicy
from darkroom.clock import Clock, utcnow
from darkroom.contract import FailureCode
from darkroom.db.database import Database
from darkroom.settings import Settings
from darkroom.tasks.model import Claim
from darkroom.tasks.outbox import Outbox
from darkroom.tasks.store import TaskStore
from darkroom.testing import FakeClock, TableResolver

from ..helpers import add_task, funded_key, make_account
from .receiver import Receiver, https_receiver

# The SQL or the locking under test differs by backend.
pytestmark = pytest.mark.each_database

MODELS = ["krea-2-turbo"]


@pytest.fixture
def receiver_script() -> list[int | tuple[str, object]]:
    return [200]


@pytest.fixture
def receiver(tmp_path: Path, receiver_script: list[int | tuple[str, object]]) -> Iterator[Receiver]:
    with https_receiver(tmp_path, receiver_script) as r:
        yield r


SenderFactory = Callable[..., CallbackSender]


@pytest.fixture
async def make_sender(settings: Settings, receiver: Receiver) -> AsyncIterator[SenderFactory]:
    """Senders as an API process runs them, each with its own services (closed afterwards)."""
    made: list[Services] = []

    def factory(
        *,
        sender_id: str = "s1",
        allow_private: bool = True,
        clock: Clock | None = None,
        **overrides: object,
    ) -> CallbackSender:
        dev = settings.model_copy(
            update={
                "callback_allow_private": allow_private,
                "callback_ca_file": receiver.ca_file,
                **overrides,
            }
        )
        resolver = TableResolver({h: [["127.0.0.1"]] for h in ("hooks.test", "fast.test")})
        services = Services.from_settings(dev)
        made.append(services)
        return CallbackSender(
            SenderPolicy.from_settings(dev), Outbox(services.db), services.tasks, services.accounts, services.links,
            resolver, clock=clock, sender_id=sender_id,
        )  # fmt: skip

    yield factory
    for services in made:
        await services.db.dispose()


async def finish(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database, url: str, *, ok: bool = True
) -> str:
    made = await client.post(
        "/v1/images/generations",
        json={"model": "krea-2-turbo", "prompt": "p", "callback_url": url},
        headers=auth,
    )
    assert made.status_code == 200, made.text
    store = TaskStore(db)
    [task] = await store.claim("w", limit=1, lease_s=30, models=MODELS)
    claim = Claim(task.id, task.attempt)
    if ok:
        assert await store.complete(claim, [f"{task.id}/0.png"])
    else:
        assert await store.fail(claim, FailureCode.GENERATION_FAILED_NO_CONTENT, "no image")
    return task.id


async def pump(
    senders: list[CallbackSender], until: Callable[[], bool], timeout_s: float = 30
) -> None:
    deadline = time.monotonic() + timeout_s
    while not until():
        assert time.monotonic() < deadline, "callbacks did not get there in time"
        for sender in senders:
            await sender.run_once()
        await asyncio.sleep(0.05)
    for sender in senders:
        await sender.drain()


async def test_completed_and_failed_tasks_call_back_once_signed(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database,
    receiver: Receiver, make_sender: SenderFactory,
) -> None:  # fmt: skip
    done = await finish(client, auth, db, receiver.url(path="/done"))
    failed = await finish(client, auth, db, receiver.url(path="/failed"), ok=False)
    sender = make_sender()
    await pump([sender], lambda: receiver.count() >= 2)
    await pump([sender], lambda: True)  # one more pass: nothing else is due
    await asyncio.sleep(0.3)
    got = {r.path: r for r in receiver.received}
    assert sorted(got) == ["/done", "/failed"] and receiver.count() == 2

    secret = await AccountStore(db).webhook_secret(1)
    for path, task_id in (("/done", done), ("/failed", failed)):
        request = got[path]
        body = Webhook(secret).verify(request.body, request.headers)
        polled = (await client.get(f"/v1/tasks/{task_id}", headers=auth)).json()
        assert body == polled
        assert request.headers["webhook-id"] == f"msg_{task_id}"
        assert request.headers["Host"] == f"hooks.test:{receiver.port}"
        assert request.headers["Content-Type"] == "application/json"
    assert json.loads(got["/done"].body)["status"] == "completed"
    assert json.loads(got["/failed"].body)["error"]["code"] == "generation_failed_no_content"
    states = await Outbox(db).states([done, failed])
    assert states == {done: ("delivered", 1, None), failed: ("delivered", 1, None)}


# Timing and HTTP behaviour, not SQL: one database is enough (the claim runs on both elsewhere).
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def run_on_fake_time(
    sender: CallbackSender, clock: FakeClock, outbox: Outbox, task_id: str, attempts: int
) -> list[float]:
    """Run the sender, moving its clock straight to each retry's due time instead of sleeping;
    returns the clock's seconds at each attempt, from the first."""
    seen: list[float] = []
    start = clock.now()
    for _ in range(4 * attempts):
        due = await outbox.next_due()
        if due is None:
            break
        if due > clock.now():
            clock.set(due)
        if await sender.run_once():
            seen.append((clock.now() - start).total_seconds())
        await sender.drain()
    return seen


@SQLITE_ONLY
@pytest.mark.parametrize("receiver_script", [[503, 500, 404, 200]])
async def test_retries_after_one_two_and_four_seconds(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database,
    receiver: Receiver, make_sender: SenderFactory,
) -> None:  # fmt: skip
    task_id = await finish(client, auth, db, receiver.url())
    clock = FakeClock()
    sender = make_sender(clock=clock)
    outbox = Outbox(db)
    started = time.monotonic()
    at = await run_on_fake_time(sender, clock, outbox, task_id, attempts=4)
    assert time.monotonic() - started < 5, "seven seconds of schedule, not slept through"
    assert receiver.count() == 4
    assert [b - a for a, b in itertools.pairwise(at)] == [1.0, 2.0, 4.0]
    assert {r.headers["webhook-id"] for r in receiver.received} == {f"msg_{task_id}"}
    assert (await outbox.states([task_id]))[task_id] == ("delivered", 4, None)


@SQLITE_ONLY
@pytest.mark.parametrize("receiver_script", [[500]])
async def test_a_receiver_that_always_fails_gets_four_attempts(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database,
    receiver: Receiver, make_sender: SenderFactory,
) -> None:  # fmt: skip
    task_id = await finish(client, auth, db, receiver.url())
    clock = FakeClock()
    sender = make_sender(clock=clock)
    outbox = Outbox(db)
    at = await run_on_fake_time(sender, clock, outbox, task_id, attempts=4)
    assert at == [0.0, 1.0, 3.0, 7.0]
    clock.advance(3600)  # an hour later, nothing more is due or sent
    assert await sender.run_once() == 0
    assert receiver.count() == 4
    assert (await outbox.states([task_id]))[task_id] == ("failed", 4, "HTTP 500")


@pytest.mark.parametrize("receiver_script", [[500, 500, 500, 500, 200]])
async def test_every_attempt_is_kept_and_a_given_up_callback_can_be_sent_again(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database,
    receiver: Receiver, make_sender: SenderFactory,
) -> None:  # fmt: skip
    task_id = await finish(client, auth, db, receiver.url())
    clock = FakeClock()
    sender = make_sender(clock=clock)
    outbox = Outbox(db)
    await run_on_fake_time(sender, clock, outbox, task_id, attempts=4)
    [row] = await outbox.listing(status="failed")
    assert (row.task_id, row.account, row.attempts, row.last_error) == (
        task_id, "alice", 4, "HTTP 500"
    )  # fmt: skip
    assert await outbox.listing(status="pending") == []
    assert await outbox.retry([task_id, "task-unified-0-unknown"], clock.now()) == [task_id]
    assert await outbox.retry([task_id], clock.now()) == [], "a pending one is left as it is"
    await run_on_fake_time(sender, clock, outbox, task_id, attempts=1)
    assert (await outbox.states([task_id]))[task_id] == ("delivered", 1, None)
    attempts = await outbox.attempts_of(task_id)
    assert [(a.delivered, a.error) for a in attempts] == [(False, "HTTP 500")] * 4 + [(True, None)]
    assert [a.attempted_at for a in attempts] == sorted(a.attempted_at for a in attempts)
    assert {r.headers["webhook-id"] for r in receiver.received} == {f"msg_{task_id}"}
    counted = {
        outcome: sender.metrics.registry.get_sample_value(
            "darkroom_callback_attempts_total", {"outcome": outcome}
        )
        for outcome in ("retry", "failed", "delivered")
    }
    assert counted == {"retry": 3.0, "failed": 1.0, "delivered": 1.0}


@pytest.mark.parametrize("receiver_script", [[("redirect", "https://127.0.0.1:1/steal")]])
async def test_a_redirect_is_a_failure_and_is_not_followed(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database,
    receiver: Receiver, make_sender: SenderFactory,
) -> None:  # fmt: skip
    task_id = await finish(client, auth, db, receiver.url())
    sender = make_sender()
    await pump([sender], lambda: receiver.count() >= 1)
    assert (await Outbox(db).states([task_id]))[task_id] == ("pending", 1, "HTTP 302")
    assert [r.path for r in receiver.received] == ["/hook"]


async def test_an_address_that_turned_private_is_refused_at_send_time(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database,
    receiver: Receiver, make_sender: SenderFactory,
) -> None:  # fmt: skip
    """DNS rebinding: the host was public at submit; at send time it answers loopback."""
    task_id = await finish(client, auth, db, f"https://rebind.example.com:{receiver.port}/hook")
    sender = make_sender(allow_private=False)
    sender.resolver = TableResolver({"rebind.example.com": [["127.0.0.1"]]})
    outbox = Outbox(db)
    await pump([sender], lambda: True)
    await sender.run_once()
    await sender.drain()
    status, attempts, error = (await outbox.states([task_id]))[task_id]
    assert (status, attempts) == ("pending", 1)
    assert error is not None and "internal address" in error
    assert receiver.count() == 0


async def test_two_senders_never_send_one_callback_twice(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database,
    receiver: Receiver, make_sender: SenderFactory,
) -> None:  # fmt: skip
    ids = [await finish(client, auth, db, receiver.url(path=f"/{n}")) for n in range(6)]
    senders = [make_sender(sender_id=f"s{n}") for n in range(3)]
    await pump(senders, lambda: receiver.count() >= 6)
    for _ in range(10):
        await asyncio.gather(*(s.run_once() for s in senders))
        await asyncio.sleep(0.05)
    for sender in senders:
        await sender.drain()
    assert sorted(r.path for r in receiver.received) == sorted(f"/{n}" for n in range(6))
    states = await Outbox(db).states(ids)
    assert {s[:2] for s in states.values()} == {("delivered", 1)}


async def test_tasks_without_a_callback_queue_nothing(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database
) -> None:
    made = await client.post(
        "/v1/images/generations", json={"model": "krea-2-turbo", "prompt": "p"}, headers=auth
    )
    store = TaskStore(db)
    [task] = await store.claim("w", limit=1, lease_s=30, models=MODELS)
    assert await store.complete(Claim(task.id, task.attempt), ["x.png"])
    assert await Outbox(db).states([made.json()["id"]]) == {}


async def test_ended_callbacks_are_forgotten_after_retention(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database,
    receiver: Receiver, make_sender: SenderFactory,
) -> None:  # fmt: skip
    sent = await finish(client, auth, db, receiver.url(path="/sent"))
    await pump([make_sender()], lambda: receiver.count() >= 1)
    waiting = await finish(client, auth, db, receiver.url(path="/later"))
    outbox = Outbox(db)
    assert await outbox.delete_finished_before(utcnow() - timedelta(hours=1)) == 0
    assert len(await outbox.attempts_of(sent)) == 1
    # Its attempts go with it (PostgreSQL's foreign key would refuse the row's delete otherwise).
    assert await outbox.delete_finished_before(utcnow() + timedelta(seconds=1)) == 1
    assert await outbox.states([sent, waiting]) == {waiting: ("pending", 0, None)}
    assert await outbox.attempts_of(sent) == []


async def test_a_callback_in_flight_is_due_when_its_lock_runs_out(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database
) -> None:
    """Otherwise every sender would poll in a tight loop while a slow receiver is being tried."""
    await finish(client, auth, db, "https://hooks.example.com/slow")
    outbox = Outbox(db)
    due = await outbox.next_due()
    assert due is not None and due <= utcnow()  # claimable now
    [held] = await outbox.claim_due("s1", limit=5, lock_s=30, now=utcnow())
    due = await outbox.next_due()
    assert due is not None and due > utcnow() + timedelta(seconds=25)  # when the lock runs out
    assert await outbox.claim_due("s2", limit=5, lock_s=30, now=utcnow()) == []
    assert held.attempts == 0


async def test_accounts_take_turns_and_keep_to_their_share(db: Database) -> None:
    """The claim: every account's first due callback before any account's second, and an
    account with deliveries in flight gets only what its share leaves (both databases)."""
    first, second = await make_account(db, "first"), await make_account(db, "second")
    store, outbox = TaskStore(db), Outbox(db)
    for ids, count in ((first, 5), (second, 2)):
        for _ in range(count):
            task = await add_task(db, ids, callback_url="https://hooks.example.com/h")
            [claimed] = await store.claim("w", limit=1, lease_s=30, models=MODELS)
            assert claimed.id == task.id
            assert await store.complete(Claim(claimed.id, claimed.attempt), ["x.png"])
    now = utcnow() + timedelta(seconds=1)
    taken = await outbox.claim_due("s1", limit=3, lock_s=30, now=now)
    assert sorted(d.account_id for d in taken) == sorted([first[0], first[0], second[0]])
    # `first` has two in flight and a share of three: one more, then `second`'s last.
    taken = await outbox.claim_due(
        "s1", limit=10, lock_s=30, now=now, per_account=3, busy={first[0]: 2, second[0]: 1}
    )
    assert sorted(d.account_id for d in taken) == sorted([first[0], second[0]])
    # Given back unattempted, due again later: meanwhile only `first`'s last two are due.
    assert await outbox.defer(taken, "s1", until=now + timedelta(seconds=5)) == 2
    rest = await outbox.claim_due("s2", limit=10, lock_s=30, now=now)
    assert [d.account_id for d in rest] == [first[0]] * 2
    assert not {d.id for d in rest} & {d.id for d in taken}
    again = await outbox.claim_due("s2", limit=10, lock_s=30, now=now + timedelta(seconds=6))
    assert sorted(d.id for d in again) == sorted(d.id for d in taken)
    assert {d.attempts for d in again} == {0}


async def until_received(receiver: Receiver, senders: list[CallbackSender]) -> None:
    """Run the senders' claims (without waiting for their deliveries) until `receiver` has a
    request; the deliveries still hanging are cancelled by the caller."""
    deadline = time.monotonic() + 60
    while receiver.count() == 0:
        assert time.monotonic() < deadline, "the receiver got nothing"
        for sender in senders:
            await sender.run_once()
        await asyncio.sleep(0.05)


async def cancel_deliveries(sender: CallbackSender) -> None:
    for running in list(sender._running):
        running.cancel()
    await asyncio.gather(*sender._running, return_exceptions=True)


@SQLITE_ONLY
@pytest.mark.parametrize("receiver_script", [[("hang", 60)]])
async def test_one_accounts_hanging_receivers_do_not_hold_the_pool(
    tmp_path: Path, client: httpx.AsyncClient, auth: dict[str, str], db: Database,
    receiver: Receiver, make_sender: SenderFactory,
) -> None:  # fmt: skip
    """Account 1's eight callbacks go to a receiver that never answers; account 2's one
    callback, due once those are in flight, must not wait for their 10 s timeouts: it is
    delivered while all of account 1's first attempts are still hanging (the bound: before any
    of them ends)."""
    hanging = [await finish(client, auth, db, receiver.url()) for _ in range(8)]
    other_auth, _ = await funded_key(db, "other", 100)
    (tmp_path / "fast").mkdir()
    with https_receiver(tmp_path / "fast", [200]) as fast:
        sender = make_sender(callback_concurrency=4, callback_ca_file=fast.ca_file)
        sender.ssl_context.load_verify_locations(cafile=str(receiver.ca_file))
        try:
            await until_received(receiver, [sender])
            await finish(client, other_auth, db, fast.url(host="fast.test"))
            await until_received(fast, [sender])
            states = await Outbox(db).states(hanging)
        finally:
            await cancel_deliveries(sender)
    assert {attempts for _, attempts, _ in states.values()} == {0}, "an attempt had ended"
    assert receiver.count() <= sender.lanes.per_party == 1


@SQLITE_ONLY
@pytest.mark.parametrize("receiver_script", [[("hang", 60)]])
async def test_a_hanging_host_holds_its_share_whichever_accounts_use_it(
    tmp_path: Path, client: httpx.AsyncClient, db: Database,
    receiver: Receiver, make_sender: SenderFactory,
) -> None:  # fmt: skip
    """Four accounts' callbacks go to one host that never answers; each account is within its
    own share, but the host may hold only its share of the pool, so a fifth account's callback
    is delivered while every attempt at the hanging host is still in flight."""
    hanging = []
    for name in ("a", "b", "c", "d"):
        key, _ = await funded_key(db, name, 100)
        hanging += [await finish(client, key, db, receiver.url()) for _ in range(2)]
    (tmp_path / "fast").mkdir()
    with https_receiver(tmp_path / "fast", [200]) as fast:
        sender = make_sender(
            callback_concurrency=4, callback_share=0.5, callback_ca_file=fast.ca_file
        )
        sender.ssl_context.load_verify_locations(cafile=str(receiver.ca_file))
        try:
            await until_received(receiver, [sender])
            other, _ = await funded_key(db, "other", 100)
            await finish(client, other, db, fast.url(host="fast.test"))
            await until_received(fast, [sender])
            states = await Outbox(db).states(hanging)
            in_flight = sender.lanes.by_host["hooks.test"]
        finally:
            await cancel_deliveries(sender)
    assert {attempts for _, attempts, _ in states.values()} == {0}, "an attempt had ended"
    assert in_flight == sender.lanes.per_party == 2
    assert receiver.count() <= 2
