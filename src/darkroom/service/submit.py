"""Submitting a generation: the create use case, below HTTP.

An order is checked in the contract's order of refusals (the model exists, the key may use it,
the prompt passes the screen and fits the model's tokenizer, the callback address is allowed),
then priced, estimated and queued in one transaction with its reservation. A repeated
Idempotency-Key gives back the task its first request made, as it stands now.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from darkroom.accounts.store import Principal
from darkroom.billing.money import to_micro
from darkroom.callbacks.policy import Resolver, check_at_submit
from darkroom.clock import Clock, SystemClock
from darkroom.contract import PROMPT_TOKEN_LIMIT, SEED_MAX, Quality, Status, new_task_id, pixel_size
from darkroom.engine.tokens import TokenCounter
from darkroom.errors import InvalidRequest, ModelAccessDenied, ServiceUnavailable
from darkroom.moderation.prompt import PromptScreen
from darkroom.settings import Settings
from darkroom.tasks.estimate import estimate_s, run_time_s
from darkroom.tasks.model import IdempotencyKey, NewTask, Task
from darkroom.tasks.queue_view import QueueView
from darkroom.tasks.stats import QueueStats
from darkroom.tasks.store import IdempotencyRace, TaskStore
from darkroom.tasks.workers import WorkerRegistry
from darkroom.tracing import current_traceparent


@dataclass(frozen=True, slots=True)
class GenerationOrder:
    """What a create asks for, defaults applied (`seed` None: the server draws one)."""

    model: str
    prompt: str
    size: str
    quality: Quality
    seed: int | None
    nsfw_check: bool
    callback_url: str | None


@dataclass(frozen=True, slots=True)
class Submitted:
    """The task a create made or replayed; `estimate` only for one made now (a replay's is
    computed afresh, as for a poll)."""

    task: Task
    estimate: int | None
    replayed: bool
    queue_position: int | None = None  # a task made now: its place in its model's queue


@dataclass(frozen=True, slots=True)
class SubmitPolicy:
    """What the create use case reads of the settings, made once at the composition root."""

    prices: dict[str, dict[str, float]]  # model -> quality -> credits; its keys: models served
    default_max_concurrent: int
    callback_allow_private: bool
    refuse_unserved_after_s: float | None
    lease_s: float
    max_queued_per_model: int | None

    @classmethod
    def from_settings(cls, settings: Settings) -> SubmitPolicy:
        return cls(
            prices={model: dict(settings.prices[model]) for model in settings.models},
            default_max_concurrent=settings.default_max_concurrent,
            callback_allow_private=settings.callback_allow_private,
            refuse_unserved_after_s=settings.refuse_unserved_after_s,
            lease_s=settings.lease_s,
            max_queued_per_model=settings.max_queued_per_model,
        )


class Submitter:
    def __init__(
        self,
        policy: SubmitPolicy,
        tasks: TaskStore,
        queue: QueueView,
        workers: WorkerRegistry,
        prompt_screen: PromptScreen,
        token_counters: dict[str, TokenCounter],
        resolver: Resolver,
        *,
        strict_check_available: bool,
        clock: Clock | None = None,
    ) -> None:
        self.policy = policy
        self.clock = clock or SystemClock()
        self.tasks = tasks
        self.queue = queue
        self.prompt_screen = prompt_screen
        self.token_counters = token_counters
        self.resolver = resolver
        self.strict_check_available = strict_check_available
        self.workers = workers
        self.started = self.clock.now()  # with no worker ever seen, a model is unserved since then

    async def submit(
        self,
        order: GenerationOrder,
        principal: Principal,
        *,
        idempotency: IdempotencyKey | None,
        link_base: str,
    ) -> Submitted:
        """Queue `order` for `principal`, or replay the task its Idempotency-Key made; raises
        the contract's refusals (InvalidRequest, ModelAccessDenied, RateLimited,
        InsufficientQuota) with nothing stored."""
        if idempotency is not None:
            replayed = await self.tasks.replay(principal.key_id, idempotency)
            if replayed is not None:
                return Submitted(replayed, None, replayed=True)
        try:
            keys = [idempotency] if idempotency else []
            created = await self._queue([order], principal, keys, link_base)
        except IdempotencyRace:
            assert idempotency is not None
            raced = await self.tasks.replay(principal.key_id, idempotency)
            assert raced is not None
            return Submitted(raced, None, replayed=True)
        return created[0]

    async def submit_many(
        self,
        orders: Sequence[GenerationOrder],
        principal: Principal,
        *,
        link_base: str,
        idempotency: Sequence[IdempotencyKey] = (),
    ) -> list[Submitted]:
        """Queue every order, or none (one transaction reserves them all): the OpenAI route's
        `n` images. The orders differ in their seed only, so they are checked once."""
        return await self._queue(orders, principal, idempotency, link_base)

    async def _queue(
        self,
        orders: Sequence[GenerationOrder],
        principal: Principal,
        idempotency: Sequence[IdempotencyKey],
        link_base: str,
    ) -> list[Submitted]:
        first = orders[0]
        await self.check(first, principal)
        await self._check_served(first.model)
        stats = await self.queue.queue_stats(first.model, principal.account_id)
        self._check_queue_bound(first, stats)
        estimate = estimate_s(stats, first.quality, Status.PENDING, 0)
        news = [self._new_task(order, principal, estimate, link_base) for order in orders]
        limit = principal.limits.max_concurrent or self.policy.default_max_concurrent
        created = await self.tasks.create_many(
            news,
            max_unfinished=limit,
            retry_after_s=math.ceil(run_time_s(stats, first.quality)),
            idempotency=idempotency,
        )
        for task in created:
            self.queue.note_queued(task.model, task.quality, task.account_id, task.created_at)
        ahead = sum(stats.ahead.values())
        return [
            Submitted(task, estimate, replayed=False, queue_position=ahead + 1 + index)
            for index, task in enumerate(created)
        ]

    async def check(self, order: GenerationOrder, principal: Principal) -> None:
        """Every refusal that needs no database write, in the contract's order."""
        if order.model not in self.policy.prices:
            raise InvalidRequest(f"Unknown model: {order.model}", param="model")
        if not principal.limits.allows(order.model):
            raise ModelAccessDenied(f"Token does not have access to model: {order.model}")
        self.prompt_screen.check(order.prompt, strict=order.nsfw_check)
        if order.nsfw_check and not self.strict_check_available:
            raise InvalidRequest(
                "nsfw_check is not available on this server: its image checker is not installed",
                param="nsfw_check",
            )
        counter = self.token_counters.get(order.model)
        if counter is not None:
            tokens = counter.count(order.prompt)
            if tokens > PROMPT_TOKEN_LIMIT:
                raise InvalidRequest(
                    f"Prompt is too long: {tokens} tokens; the limit is {PROMPT_TOKEN_LIMIT}",
                    param="prompt",
                )
        if order.callback_url is not None:
            await check_at_submit(
                order.callback_url,
                self.resolver,
                allow_private=self.policy.callback_allow_private,
            )

    async def _check_served(self, model: str) -> None:
        """ServiceUnavailable once `model` has had no live worker for `refuse_unserved_after_s`."""
        bound = self.policy.refuse_unserved_after_s
        if bound is None:
            return
        seen = await self.workers.last_seen(model) or self.started
        unserved_s = (self.clock.now() - seen).total_seconds() - self.policy.lease_s
        if unserved_s > bound:
            raise ServiceUnavailable(
                f"No worker has served {model} for {unserved_s:.0f} s; retry later",
                retry_after=30,
            )

    def _check_queue_bound(self, order: GenerationOrder, stats: QueueStats) -> None:
        """ServiceUnavailable, with the time the queue ahead needs, once the model's queue is
        at its bound: a full queue answers now instead of growing without end."""
        bound = self.policy.max_queued_per_model
        queued = stats.queued
        if bound is None or queued < bound:
            return
        wait = estimate_s(stats, order.quality, Status.PENDING, 0)
        raise ServiceUnavailable(
            f"{order.model} has {queued} tasks waiting, its limit; retry later",
            retry_after=wait,
        )

    def _new_task(
        self, order: GenerationOrder, principal: Principal, estimate: int, link_base: str
    ) -> NewTask:
        now = self.clock.now()
        width, height = pixel_size(order.size, order.quality)
        price = self.policy.prices[order.model][order.quality.value]
        return NewTask(
            id=new_task_id(int(now.timestamp())),
            account_id=principal.account_id,
            api_key_id=principal.key_id,
            model=order.model,
            prompt=order.prompt,
            size=order.size,
            quality=order.quality,
            width=width,
            height=height,
            seed=order.seed or secrets.randbelow(SEED_MAX) + 1,
            nsfw_check=order.nsfw_check,
            callback_url=order.callback_url,
            link_base=link_base,
            price_micro=to_micro(price),
            estimated_time=estimate,
            created_at=now,
            trace_parent=current_traceparent(),
        )
