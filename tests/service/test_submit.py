"""The create use case on the in-memory task table: the contract's refusals in their order,
nothing stored by any of them, the reservation and the estimate; no database, no process, no
sleeping (time is a FakeClock). The table's behaviour itself is held to the real store's by
tests/tasks/test_conformance.py."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest

from darkroom.accounts.store import KeyLimits, Principal
from darkroom.contract import Quality, Status
from darkroom.errors import (
    InsufficientQuota,
    InvalidRequest,
    ModelAccessDenied,
    RateLimited,
    ServiceUnavailable,
)
from darkroom.moderation.prompt import PromptScreen
from darkroom.service.submit import GenerationOrder, SubmitPolicy, Submitter
from darkroom.tasks.model import IdempotencyKey
from darkroom.tasks.queue_view import QueueView
from darkroom.testing import FakeClock, InMemoryTaskStore, TableResolver

POLICY = SubmitPolicy(
    prices={"krea-2-turbo": {"1K": 0.45, "2K": 1.8}},
    default_max_concurrent=3,
    callback_allow_private=False,
    refuse_unserved_after_s=None,
    lease_s=60,
    max_queued_per_model=None,
)
ALICE = Principal(key_id=11, account_id=1, account_name="alice", user_group="default")
ORDER = GenerationOrder(
    model="krea-2-turbo",
    prompt="a lighthouse at dusk",
    size="16:9",
    quality=Quality.K1,
    seed=None,
    nsfw_check=False,
    callback_url=None,
)


class Words:
    """A token counter that counts words (the real one is the model's tokenizer)."""

    def count(self, prompt: str) -> int:
        return len(prompt.split())


class LastSeen:
    """The workers table's one answer the use case reads: when a model's worker was seen."""

    def __init__(self, seen: datetime | None) -> None:
        self.seen = seen

    async def last_seen(self, model: str) -> datetime | None:
        return self.seen


def submitter(
    table: InMemoryTaskStore, policy: SubmitPolicy = POLICY, workers: LastSeen | None = None
) -> Submitter:
    return Submitter(
        policy,
        table,  # type: ignore[arg-type]
        QueueView(table),  # type: ignore[arg-type]
        workers or LastSeen(None),  # type: ignore[arg-type]
        PromptScreen.load(),
        {"krea-2-turbo": Words()},  # type: ignore[dict-item]
        TableResolver({"hooks.example": [["203.0.113.7"]]}),
        strict_check_available=False,
        clock=table.clock,
    )


@pytest.fixture
def table() -> InMemoryTaskStore:
    return InMemoryTaskStore(FakeClock(), balances={1: 1_000_000})


async def test_a_create_reserves_the_price_and_estimates_its_wait(
    table: InMemoryTaskStore,
) -> None:
    use_case = submitter(table)
    first = await use_case.submit(ORDER, ALICE, idempotency=None, link_base="http://x/")
    second = await use_case.submit(ORDER, ALICE, idempotency=None, link_base="http://x/")
    assert (first.task.status, first.task.width, first.task.height) == (Status.PENDING, 1344, 768)
    assert 1 <= first.task.seed <= 1_048_576
    assert (first.queue_position, second.queue_position) == (1, 2)
    assert first.estimate is not None and second.estimate is not None
    assert second.estimate > first.estimate  # one task ahead of it now
    assert table.balances[1] == 1_000_000 - 2 * 450_000
    assert second.task.created_at == table.clock.now()


@pytest.mark.parametrize(
    ("order", "principal", "refusal"),
    [
        (replace(ORDER, model="krea-3"), ALICE, InvalidRequest),
        (ORDER, replace(ALICE, limits=KeyLimits(allowed_models=("other",))), ModelAccessDenied),
        (replace(ORDER, prompt="word " * 641), ALICE, InvalidRequest),
        (replace(ORDER, nsfw_check=True), ALICE, InvalidRequest),
        (replace(ORDER, callback_url="http://hooks.example/x"), ALICE, InvalidRequest),
        (replace(ORDER, quality=Quality.K2), ALICE, InsufficientQuota),
    ],
)
async def test_every_refusal_stores_nothing(
    table: InMemoryTaskStore, order: GenerationOrder, principal: Principal, refusal: type
) -> None:
    with pytest.raises(refusal):
        await submitter(table).submit(order, principal, idempotency=None, link_base="http://x/")
    assert table.rows == {} and table.balances == {1: 1_000_000}


async def test_the_key_limit_then_the_idempotency_key(table: InMemoryTaskStore) -> None:
    use_case = submitter(table, replace(POLICY, default_max_concurrent=1))
    key = IdempotencyKey("k-1", "body-a")
    made = await use_case.submit(ORDER, ALICE, idempotency=key, link_base="http://x/")
    again = await use_case.submit(ORDER, ALICE, idempotency=key, link_base="http://x/")
    assert again.replayed and again.task.id == made.task.id  # not refused, not charged twice
    with pytest.raises(RateLimited):
        await use_case.submit(ORDER, ALICE, idempotency=None, link_base="http://x/")
    assert len(table.rows) == 1 and table.balances[1] == 1_000_000 - 450_000


async def test_a_model_unserved_past_its_bound_is_refused(table: InMemoryTaskStore) -> None:
    policy = replace(POLICY, refuse_unserved_after_s=30)
    seen = LastSeen(None)
    use_case = submitter(table, policy, seen)  # no worker ever: unserved since it started
    table.clock.advance(89)  # the lease (60 s) plus the bound (30 s), not yet past
    await use_case.submit(ORDER, ALICE, idempotency=None, link_base="http://x/")
    table.clock.advance(2)
    with pytest.raises(ServiceUnavailable):
        await use_case.submit(ORDER, ALICE, idempotency=None, link_base="http://x/")
    seen.seen = table.clock.now()
    await use_case.submit(ORDER, ALICE, idempotency=None, link_base="http://x/")
    assert len(table.rows) == 2
