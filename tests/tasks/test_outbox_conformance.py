"""One suite for every implementation of the callback outbox and the sweeps beside it: the
real `Outbox`, `TaskRetention` and `WorkerRegistry` on SQLite and on PostgreSQL, and
`darkroom.testing`'s in-memory ones, which the sender's and maintenance's millisecond tests run
on. What one does, the others must: callbacks queued as tasks end, claimed under a lock that
runs out, accounts in turn, the fence on every attempt, retries after 1, 2 and 4 s, operators'
retries, and what the sweeps forget. The stores and the clock: tests/tasks/conftest.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from darkroom.contract import FailureCode
from darkroom.tasks.model import Claim
from darkroom.tasks.outbox import MAX_ATTEMPTS, RETRY_DELAYS_S

from .conftest import Tables

MODELS = ["krea-2-turbo"]
PRICE = 450_000
LOCK_S = 30.0


async def ended(tables: Tables, ids: tuple[int, int], url: str | None, *, ok: bool = True) -> str:
    """A task with this callback URL, created, claimed and ended now."""
    task = await tables.store.create(tables.task(ids, callback_url=url))
    [held] = await tables.store.claim("w", limit=1, lease_s=60, models=MODELS)
    claim = Claim(held.id, held.attempt)
    if ok:
        assert await tables.store.complete(claim, [f"{task.id}/0.png"])
    else:
        assert await tables.store.fail(claim, FailureCode.GENERATION_FAILED_NO_CONTENT, "none")
    return str(task.id)


async def test_ended_tasks_queue_callbacks_that_one_sender_holds_until_its_lock_runs_out(
    tables: Tables,
) -> None:
    outbox = tables.outbox
    ids = await tables.fund("a", 10 * PRICE)
    assert await outbox.next_due() is None
    done = await ended(tables, ids, "https://hooks.test/done")
    failed = await ended(tables, ids, "https://hooks.test/failed", ok=False)
    await ended(tables, ids, None)  # asked for none: queues none
    assert await outbox.pending_count() == 2
    now = tables.clock.now()
    assert await outbox.next_due() <= now
    first = await outbox.claim_due("s1", limit=10, lock_s=LOCK_S, now=now)
    assert [(d.task_id, d.attempts) for d in first] == [(done, 0), (failed, 0)]
    assert first[0].webhook_id == f"msg_{done}"
    assert await outbox.claim_due("s2", limit=10, lock_s=LOCK_S, now=now) == []
    # Held: due when the lock runs out, not at its past attempt time.
    assert await outbox.next_due() == now + timedelta(seconds=LOCK_S)
    tables.clock.advance(LOCK_S + 1)
    taken = await outbox.claim_due("s2", limit=10, lock_s=LOCK_S, now=tables.clock.now())
    assert [d.task_id for d in taken] == [done, failed]
    # The first sender lost its lock: its record is refused, the second's counts.
    record: dict[str, Any] = {"delivered": True, "error": "", "now": tables.clock.now()}
    assert await outbox.record(first[0], "s1", **record) is None
    assert await outbox.record(taken[0], "s2", **record) == "delivered"
    assert await outbox.record(taken[0], "s2", **record) is None  # recorded once
    assert await outbox.pending_count() == 1
    assert (await outbox.states([done]))[done] == ("delivered", 1, None)


async def test_a_failing_receiver_is_retried_after_1_2_and_4_s_then_given_up(
    tables: Tables,
) -> None:
    outbox = tables.outbox
    ids = await tables.fund("a", 10 * PRICE)
    task_id = await ended(tables, ids, "https://hooks.test/down")
    statuses, earlier = [], None
    for attempt in range(MAX_ATTEMPTS):
        now = tables.clock.now()
        [delivery] = await outbox.claim_due("s", limit=5, lock_s=LOCK_S, now=now)
        assert delivery.attempts == attempt
        if earlier is not None:  # the same sender's claim of an attempt already recorded
            assert await outbox.record(earlier, "s", delivered=True, error="", now=now) is None
        earlier = delivery
        status = await outbox.record(delivery, "s", delivered=False, error="HTTP 503", now=now)
        statuses.append(status)
        if attempt < len(RETRY_DELAYS_S):
            wait = timedelta(seconds=RETRY_DELAYS_S[attempt])
            assert await outbox.next_due() == now + wait
            tables.clock.advance(RETRY_DELAYS_S[attempt] - 0.5)  # not yet due
            assert await outbox.claim_due("s", limit=5, lock_s=LOCK_S, now=tables.clock.now()) == []
            tables.clock.advance(0.5)
    assert statuses == ["pending"] * (MAX_ATTEMPTS - 1) + ["failed"]
    assert await outbox.next_due() is None
    assert (await outbox.states([task_id]))[task_id] == ("failed", MAX_ATTEMPTS, "HTTP 503")
    attempts = await outbox.attempts_of(task_id)
    assert [(a.delivered, a.error) for a in attempts] == [(False, "HTTP 503")] * MAX_ATTEMPTS
    # An operator's retry: a new round from now, the earlier attempts kept.
    assert await outbox.retry([task_id, "no-such-task"], tables.clock.now()) == [task_id]
    assert await outbox.retry([task_id], tables.clock.now()) == []  # pending: left as it is
    [again] = await outbox.claim_due("s", limit=5, lock_s=LOCK_S, now=tables.clock.now())
    assert again.attempts == 0
    assert await outbox.record(again, "s", delivered=True, error="", now=tables.clock.now()) == (
        "delivered"
    )
    assert len(await outbox.attempts_of(task_id)) == MAX_ATTEMPTS + 1


async def test_accounts_take_turns_within_their_share(tables: Tables) -> None:
    outbox = tables.outbox
    busy = await tables.fund("busy", 10 * PRICE)
    quiet = await tables.fund("quiet", 10 * PRICE)
    backlog = [await ended(tables, busy, f"https://hooks.test/b{i}") for i in range(3)]
    late = await ended(tables, quiet, "https://hooks.test/q")
    now = tables.clock.now()
    # Every account's first before any account's second, though busy's are older.
    two = await outbox.claim_due("s", limit=2, lock_s=LOCK_S, now=now)
    assert [d.task_id for d in two] == [backlog[0], late]
    # busy has one in flight and a share of two: one more, however much room the claim has.
    more = await outbox.claim_due(
        "s", limit=10, lock_s=LOCK_S, now=now, per_account=2, busy={busy[0]: 1}
    )
    assert [d.task_id for d in more] == [backlog[1]]
    # Given back unattempted, due again later: no attempt spent, not due before then.
    later = now + timedelta(seconds=1)
    assert await outbox.defer(more, "other-sender", until=later) == 0  # not its to give
    assert await outbox.defer(more, "s", until=later) == 1
    rest = await outbox.claim_due("t", limit=10, lock_s=LOCK_S, now=now)
    assert [d.task_id for d in rest] == [backlog[2]]
    tables.clock.advance(1)
    [back] = await outbox.claim_due("t", limit=10, lock_s=LOCK_S, now=tables.clock.now())
    assert (back.task_id, back.attempts) == (backlog[1], 0)


async def test_sweeps_forget_what_outlived_its_lifetime(tables: Tables) -> None:
    outbox, retention = tables.outbox, tables.retention
    ids = await tables.fund("a", 10 * PRICE)
    old = await ended(tables, ids, "https://hooks.test/old")
    [delivery] = await outbox.claim_due("s", limit=1, lock_s=LOCK_S, now=tables.clock.now())
    await outbox.record(delivery, "s", delivered=True, error="", now=tables.clock.now())
    tables.clock.advance(100)
    recent = await ended(tables, ids, "https://hooks.test/recent")
    tables.clock.advance(10)
    # Results past a 50 s lifetime: the old task's only; its files go before its row.
    expired = await retention.expired_results(ttl_s=50)
    assert [(e.task_id, e.result_keys) for e in expired] == [(old, (f"{old}/0.png",))]
    assert await retention.delete_finished_before(retention_s=50) == 0  # files not yet gone
    await retention.mark_results_deleted(old)
    assert await retention.expired_results(ttl_s=50) == []
    assert await retention.delete_finished_before(retention_s=50) == 1
    assert await tables.store.get(old) is None and await tables.store.get(recent) is not None
    # The delivered callback ended before the cutoff; the pending one is kept, whatever its age.
    cutoff = tables.clock.now() - timedelta(seconds=50)
    assert await outbox.delete_finished_before(cutoff) == 1
    assert [r.task_id for r in await outbox.listing()] == [recent]
    assert await outbox.attempts_of(old) == []
    listed = await outbox.listing(status="pending", account="a")
    assert [(r.task_id, r.account, r.url, r.attempts) for r in listed] == [
        (recent, "a", "https://hooks.test/recent", 0)
    ]
    assert await outbox.listing(account="nobody") == []


async def test_the_workers_table_names_models_left_without_a_live_worker(tables: Tables) -> None:
    workers = tables.workers
    ids = await tables.fund("a", 10 * PRICE)
    await tables.store.create(tables.task(ids))
    assert await workers.models_without_workers(30) == {"krea-2-turbo": 1}
    await workers.register("w1", device="cpu", model="krea-2-turbo")
    seen = tables.clock.now()
    assert await workers.models_without_workers(30) == {}
    assert await workers.last_seen("krea-2-turbo") == seen
    tables.clock.advance(20)
    await workers.refresh("w1", current_tasks=["t1"], images_done=3)
    [row] = await workers.live(30)
    assert (row.state, row.current_tasks, row.images_done) == ("busy", ("t1",), 3)
    tables.clock.advance(31)  # not seen for a lease: not live, the model unserved again
    assert await workers.live(30) == []
    assert await workers.models_without_workers(30) == {"krea-2-turbo": 1}
    await workers.register("w2", device="cpu", model="krea-2-turbo")
    await workers.stopped("w2", images_done=0)
    assert [w.id for w in await workers.live(30)] == []  # stopped: not live though just seen
    await workers.register("w3", device="cpu", model="krea-2-turbo")
    await workers.refresh("w3", current_tasks=["t2"], images_done=1)
    assert [w.state for w in await workers.all()] == ["busy", "stopped", "busy"]
    # Forgotten: not seen since the cutoff, whatever it was doing.
    assert await workers.forget_stopped_before(tables.clock.now() - timedelta(seconds=10)) == 1
    assert [w.id for w in await workers.all()] == ["w2", "w3"]
