"""The callback sender against a real HTTPS receiver on loopback (trustme certificates).

The sender's own behaviour (signing, the retry schedule, what is kept and sent again,
redirects, rebinding, hanging receivers and the pool's shares) runs on `darkroom.testing`'s
in-memory task table and outbox with a FakeClock: no database, no sleeping through retries.
Two tests run on both databases through the API: a callback's body is the task's poll, and
three senders racing for one outbox send each callback once. The outbox's claim, fence and
sweeps themselves: tests/tasks/test_outbox_conformance.py, on the fake and both databases."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from darkroom.accounts.store import AccountStore
from darkroom.api.services import Services
from darkroom.callbacks.sender import CallbackSender, SenderPolicy
from darkroom.clock import Clock
from darkroom.contract import FailureCode
from darkroom.db.database import Database
from darkroom.settings import Settings
from darkroom.storage.local import LocalStorage
from darkroom.storage.signing import LinkSigner
from darkroom.tasks.model import Claim
from darkroom.tasks.outbox import Outbox
from darkroom.tasks.render import ResultLinks
from darkroom.tasks.store import TaskStore
from darkroom.testing import (
    FakeClock,
    InMemoryAccountReads,
    InMemoryOutbox,
    InMemoryTaskStore,
    TableResolver,
)

from ..conftest import PLENTY
from ..helpers import new_task
from .receiver import Receiver, https_receiver

MODELS = ["krea-2-turbo"]
HOSTS = ("hooks.test", "fast.test")


@pytest.fixture
def receiver_script() -> list[int | tuple[str, object]]:
    return [200]


@pytest.fixture
def receiver(tmp_path: Path, receiver_script: list[int | tuple[str, object]]) -> Iterator[Receiver]:
    with https_receiver(tmp_path, receiver_script) as r:
        yield r


class Tables:
    """The sender's collaborators in memory: the task table, the outbox its ended tasks queue
    callbacks in, the accounts' secrets and groups, real signed links; one FakeClock."""

    def __init__(self, tmp_path: Path) -> None:
        self.clock = FakeClock()
        self.outbox = InMemoryOutbox(self.clock)
        self.tasks = InMemoryTaskStore(self.clock, outbox=self.outbox)
        self.accounts = InMemoryAccountReads()
        storage = LocalStorage(tmp_path / "results")
        self.links = ResultLinks(storage, LinkSigner("links-secret"), 86400, "https://img.test")
        self.alice = self.account("alice")

    def account(self, name: str) -> tuple[int, int]:
        """A funded account and its key's id."""
        account = len(self.outbox.names) + 1
        self.outbox.names[account] = name
        self.tasks.balances[account] = PLENTY
        return account, 1000 + account

    async def ended(self, url: str, ids: tuple[int, int] | None = None, *, ok: bool = True) -> str:
        """A task asking for a callback at `url`, created, claimed and ended now."""
        new = new_task(ids or self.alice, callback_url=url)
        task = await self.tasks.create(replace(new, created_at=self.clock.now()))
        [held] = await self.tasks.claim("w", limit=1, lease_s=60, models=MODELS)
        claim = Claim(held.id, held.attempt)
        if ok:
            assert await self.tasks.complete(claim, [f"{task.id}/0.png"])
        else:
            assert await self.tasks.fail(claim, FailureCode.GENERATION_FAILED_NO_CONTENT, "none")
        return task.id

    def sender(
        self,
        receiver: Receiver,
        *,
        sender_id: str = "s1",
        allow_private: bool = True,
        concurrency: int = 32,
        share: float = 0.25,
    ) -> CallbackSender:
        policy = SenderPolicy(concurrency, share, 1.0, allow_private, receiver.ca_file)
        resolver = TableResolver({host: [["127.0.0.1"]] for host in HOSTS})
        return CallbackSender(
            policy, self.outbox, self.tasks, self.accounts, self.links, resolver,  # type: ignore[arg-type]
            clock=self.clock, sender_id=sender_id,
        )  # fmt: skip

    async def states(self, task_ids: list[str]) -> dict[str, tuple[str, int, str | None]]:
        states: dict[str, tuple[str, int, str | None]] = await self.outbox.states(task_ids)
        return states


@pytest.fixture
def tables(tmp_path: Path) -> Tables:
    return Tables(tmp_path)


async def pump(
    senders: list[CallbackSender], until: Callable[[], bool], timeout_s: float = 30
) -> None:
    deadline = time.monotonic() + timeout_s
    while not until():
        assert time.monotonic() < deadline, "callbacks did not get there in time"
        for sender in senders:
            await sender.run_once()
        await asyncio.sleep(0.02)
    for sender in senders:
        await sender.drain()


async def run_on_fake_time(sender: CallbackSender, tables: Tables, attempts: int) -> list[float]:
    """Run the sender, moving its clock straight to each retry's due time instead of sleeping;
    returns the clock's seconds at each attempt, from the first."""
    clock, seen = tables.clock, []
    start = clock.now()
    for _ in range(4 * attempts):
        due = await tables.outbox.next_due()
        if due is None:
            break
        if due > clock.now():
            clock.set(due)
        if await sender.run_once():
            seen.append((clock.now() - start).total_seconds())
        await sender.drain()
    return seen


async def test_completed_and_failed_tasks_call_back_signed(
    tables: Tables, receiver: Receiver
) -> None:
    done = await tables.ended(receiver.url(path="/done"))
    failed = await tables.ended(receiver.url(path="/failed"), ok=False)
    sender = tables.sender(receiver)
    await pump([sender], lambda: receiver.count() >= 2)
    assert await sender.run_once() == 0  # nothing else is due
    got = {r.path: r for r in receiver.received}
    assert sorted(got) == ["/done", "/failed"] and receiver.count() == 2

    secret = tables.accounts.secrets[1]
    for path, task_id in (("/done", done), ("/failed", failed)):
        request = got[path]
        body = Webhook(secret).verify(request.body, request.headers)
        assert body["id"] == task_id
        assert request.headers["webhook-id"] == f"msg_{task_id}"
        assert request.headers["Host"] == f"hooks.test:{receiver.port}"
        assert request.headers["Content-Type"] == "application/json"
    completed = json.loads(got["/done"].body)
    assert completed["status"] == "completed"
    assert completed["results"][0].startswith(f"https://img.test/v1/files/{done}/0.png?expires=")
    assert json.loads(got["/failed"].body)["error"]["code"] == "generation_failed_no_content"
    assert await tables.states([done, failed]) == {
        done: ("delivered", 1, None),
        failed: ("delivered", 1, None),
    }


@pytest.mark.parametrize("receiver_script", [[503, 500, 404, 200]])
async def test_retries_after_one_two_and_four_seconds(tables: Tables, receiver: Receiver) -> None:
    task_id = await tables.ended(receiver.url())
    at = await run_on_fake_time(tables.sender(receiver), tables, attempts=4)
    assert receiver.count() == 4
    assert [b - a for a, b in itertools.pairwise(at)] == [1.0, 2.0, 4.0]
    assert {r.headers["webhook-id"] for r in receiver.received} == {f"msg_{task_id}"}
    assert (await tables.states([task_id]))[task_id] == ("delivered", 4, None)


@pytest.mark.parametrize("receiver_script", [[500]])
async def test_a_receiver_that_always_fails_gets_four_attempts(
    tables: Tables, receiver: Receiver
) -> None:
    task_id = await tables.ended(receiver.url())
    sender = tables.sender(receiver)
    at = await run_on_fake_time(sender, tables, attempts=4)
    assert at == [0.0, 1.0, 3.0, 7.0]
    tables.clock.advance(3600)  # an hour later, nothing more is due or sent
    assert await sender.run_once() == 0
    assert receiver.count() == 4
    assert (await tables.states([task_id]))[task_id] == ("failed", 4, "HTTP 500")


@pytest.mark.parametrize("receiver_script", [[500, 500, 500, 500, 200]])
async def test_every_attempt_is_kept_and_a_given_up_callback_can_be_sent_again(
    tables: Tables, receiver: Receiver
) -> None:
    task_id = await tables.ended(receiver.url())
    sender = tables.sender(receiver)
    outbox, clock = tables.outbox, tables.clock
    await run_on_fake_time(sender, tables, attempts=4)
    [row] = await outbox.listing(status="failed")
    assert (row.task_id, row.account, row.attempts, row.last_error) == (
        task_id, "alice", 4, "HTTP 500"
    )  # fmt: skip
    assert await outbox.retry([task_id], clock.now()) == [task_id]
    await run_on_fake_time(sender, tables, attempts=1)
    assert (await tables.states([task_id]))[task_id] == ("delivered", 1, None)
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
    tables: Tables, receiver: Receiver
) -> None:
    task_id = await tables.ended(receiver.url())
    await pump([tables.sender(receiver)], lambda: receiver.count() >= 1)
    assert (await tables.states([task_id]))[task_id] == ("pending", 1, "HTTP 302")
    assert [r.path for r in receiver.received] == ["/hook"]


async def test_an_address_that_turned_private_is_refused_at_send_time(
    tables: Tables, receiver: Receiver
) -> None:
    """DNS rebinding: the host was public at submit; at send time it answers loopback."""
    task_id = await tables.ended(f"https://rebind.example.com:{receiver.port}/hook")
    sender = tables.sender(receiver, allow_private=False)
    sender.resolver = TableResolver({"rebind.example.com": [["127.0.0.1"]]})
    assert await sender.run_once() == 1
    await sender.drain()
    status, attempts, error = (await tables.states([task_id]))[task_id]
    assert (status, attempts) == ("pending", 1)
    assert error is not None and "internal address" in error
    assert receiver.count() == 0


async def until_received(receiver: Receiver, senders: list[CallbackSender]) -> None:
    """Run the senders' claims (without waiting for their deliveries) until `receiver` has a
    request; the deliveries still hanging are cancelled by the caller."""
    deadline = time.monotonic() + 60
    while receiver.count() == 0:
        assert time.monotonic() < deadline, "the receiver got nothing"
        for sender in senders:
            await sender.run_once()
        await asyncio.sleep(0.02)


async def cancel_deliveries(sender: CallbackSender) -> None:
    for running in list(sender._running):
        running.cancel()
    await asyncio.gather(*sender._running, return_exceptions=True)


@pytest.mark.parametrize("receiver_script", [[("hang", 60)]])
async def test_one_accounts_hanging_receivers_do_not_hold_the_pool(
    tmp_path: Path, tables: Tables, receiver: Receiver
) -> None:
    """Account 1's eight callbacks go to a receiver that never answers; account 2's one
    callback, due once those are in flight, must not wait for their 10 s timeouts: it is
    delivered while all of account 1's first attempts are still hanging (the bound: before any
    of them ends)."""
    hanging = [await tables.ended(receiver.url()) for _ in range(8)]
    (tmp_path / "fast").mkdir()
    with https_receiver(tmp_path / "fast", [200]) as fast:
        sender = tables.sender(fast, concurrency=4)
        sender.ssl_context.load_verify_locations(cafile=str(receiver.ca_file))
        try:
            await until_received(receiver, [sender])
            await tables.ended(fast.url(host="fast.test"), tables.account("other"))
            await until_received(fast, [sender])
            states = await tables.states(hanging)
        finally:
            await cancel_deliveries(sender)
    assert {attempts for _, attempts, _ in states.values()} == {0}, "an attempt had ended"
    assert receiver.count() <= sender.lanes.per_party == 1


@pytest.mark.parametrize("receiver_script", [[("hang", 60)]])
async def test_a_hanging_host_holds_its_share_whichever_accounts_use_it(
    tmp_path: Path, tables: Tables, receiver: Receiver
) -> None:
    """Four accounts' callbacks go to one host that never answers; each account is within its
    own share, but the host may hold only its share of the pool, so a fifth account's callback
    is delivered while every attempt at the hanging host is still in flight."""
    hanging = []
    for name in ("a", "b", "c", "d"):
        ids = tables.account(name)
        hanging += [await tables.ended(receiver.url(), ids) for _ in range(2)]
    (tmp_path / "fast").mkdir()
    with https_receiver(tmp_path / "fast", [200]) as fast:
        sender = tables.sender(fast, concurrency=4, share=0.5)
        sender.ssl_context.load_verify_locations(cafile=str(receiver.ca_file))
        try:
            await until_received(receiver, [sender])
            await tables.ended(fast.url(host="fast.test"), tables.account("other"))
            await until_received(fast, [sender])
            states = await tables.states(hanging)
            in_flight = sender.lanes.by_host["hooks.test"]
        finally:
            await cancel_deliveries(sender)
    assert {attempts for _, attempts, _ in states.values()} == {0}, "an attempt had ended"
    assert in_flight == sender.lanes.per_party == 2
    assert receiver.count() <= 2


# Through the API on both databases: what the outbox's SQL and locking do for real.

SenderFactory = Callable[..., CallbackSender]


@pytest.fixture
async def make_sender(settings: Settings, receiver: Receiver) -> AsyncIterator[SenderFactory]:
    """Senders as an API process runs them, each with its own services (closed afterwards)."""
    made: list[Services] = []

    def factory(*, sender_id: str = "s1", clock: Clock | None = None) -> CallbackSender:
        dev = settings.model_copy(
            update={"callback_allow_private": True, "callback_ca_file": receiver.ca_file}
        )
        resolver = TableResolver({host: [["127.0.0.1"]] for host in HOSTS})
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


@pytest.mark.each_database
async def test_a_callbacks_body_is_the_tasks_poll(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database,
    receiver: Receiver, make_sender: SenderFactory,
) -> None:  # fmt: skip
    done = await finish(client, auth, db, receiver.url(path="/done"))
    failed = await finish(client, auth, db, receiver.url(path="/failed"), ok=False)
    sender = make_sender()
    await pump([sender], lambda: receiver.count() >= 2)
    await pump([sender], lambda: True)  # one more pass: nothing else is due
    got = {r.path: r for r in receiver.received}
    assert sorted(got) == ["/done", "/failed"] and receiver.count() == 2
    secret = await AccountStore(db).webhook_secret(1)
    for path, task_id in (("/done", done), ("/failed", failed)):
        body = Webhook(secret).verify(got[path].body, got[path].headers)
        polled = (await client.get(f"/v1/tasks/{task_id}", headers=auth)).json()
        assert body == polled
    states = await Outbox(db).states([done, failed])
    assert states == {done: ("delivered", 1, None), failed: ("delivered", 1, None)}


@pytest.mark.each_database
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
