"""The OpenAI Images use case, below HTTP: a request's `n` images queued together, a retried
request answered with its first attempt's tasks, the wait for them, and a gone client's pending
tasks cancelled.

It is the create use case (`service.submit`) and nothing beside it: the same keys, credits,
limits, moderation and queue. What differs is that the caller waits for the pictures, so:

- `n` images are `n` tasks, seeds `seed`, `seed + 1`, ..., reserved in one transaction (all are
  charged only if all are accepted);
- each request's tasks are recorded as a group under its body's hash, and a request the `openai`
  package marks as a retry (`x-stainless-retry-count` above 0) finds the newest group of the same
  key and body within `openai_retry_window_s` and waits for it again, so a dropped connection or a
  client timeout neither generates nor charges twice (unless that group failed: then a retry is
  what the client asked for, and makes new tasks);
- the wait ends at a deadline, leaving the tasks to finish on the task route;
- a client that leaves before its tasks start gets them cancelled and refunded; tasks already
  generating finish and are charged, as their pictures were made.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import structlog

from darkroom.accounts.store import Principal
from darkroom.clock import Clock
from darkroom.contract import Status
from darkroom.service.submit import GenerationOrder, Submitter
from darkroom.tasks.model import IdempotencyKey, Task
from darkroom.tasks.store import TaskStore

log = structlog.get_logger("darkroom.images")

# The idempotency-key rows of an OpenAI request's tasks: `openai:<group>:<index>`.
GROUP_PREFIX = "openai:"
GONE_MESSAGE = "The client disconnected before this task started"

ReadTask = Callable[[str], Awaitable[Task | None]]


@dataclass(frozen=True, slots=True)
class Waited:
    """The request's tasks as last read; `finished` False when the deadline came first."""

    tasks: list[Task]
    finished: bool


class ImageRequests:
    def __init__(
        self, submitter: Submitter, tasks: TaskStore, retry_window_s: float, clock: Clock
    ) -> None:
        self.submitter = submitter
        self.tasks = tasks
        self.retry_window_s = retry_window_s
        self.clock = clock

    async def start(
        self,
        orders: Sequence[GenerationOrder],
        principal: Principal,
        *,
        request_hash: str,
        is_retry: bool,
        link_base: str,
    ) -> list[Task]:
        """The request's tasks: a retry's first attempt's, found again, or new ones, all queued
        or none (the create's refusals raise)."""
        if is_retry and self.retry_window_s > 0:
            since = self.clock.now() - timedelta(seconds=self.retry_window_s)
            group = await self.tasks.latest_group(
                principal.key_id, GROUP_PREFIX, request_hash, since
            )
            failed = any(task.status is Status.FAILED for task in group)
            if len(group) == len(orders) and not failed:
                log.info("openai retry joins its first attempt", tasks=[t.id for t in group])
                return group
        token = secrets.token_hex(8)
        keys = [
            IdempotencyKey(f"{GROUP_PREFIX}{token}:{index}", request_hash)
            for index in range(len(orders))
        ]
        submitted = await self.submitter.submit_many(
            orders, principal, link_base=link_base, idempotency=keys
        )
        tasks = [s.task for s in submitted]
        structlog.contextvars.bind_contextvars(task_ids=[t.id for t in tasks])  # request's lines
        return tasks

    @staticmethod
    async def wait(
        tasks: Sequence[Task], read: ReadTask, *, deadline_s: float, gone: asyncio.Event
    ) -> Waited:
        """Read the tasks (`read` waits a tick) until all have ended, the deadline passes or
        the client is `gone`; a task that vanished (retention) counts as it was last read."""
        current = list(tasks)
        ends_at = time.monotonic() + deadline_s
        for index, task in enumerate(current):
            while not task.status.is_terminal():
                left = ends_at - time.monotonic()
                if left <= 0 or gone.is_set():
                    return Waited(current, finished=False)
                reading = asyncio.ensure_future(read(task.id))
                leaving = asyncio.ensure_future(gone.wait())
                try:
                    await asyncio.wait(
                        [reading, leaving], timeout=left, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    leaving.cancel()
                if not reading.done():
                    reading.cancel()
                    continue
                task = reading.result() or task
                current[index] = task
        return Waited(current, finished=True)

    async def abandon(self, tasks: Sequence[Task]) -> list[str]:
        """Cancel, refunded, those of the tasks still pending (a client gone before they
        started); those generating finish and are charged. Returns the ids cancelled."""
        cancelled = []
        for task in tasks:
            if not task.status.is_terminal():  # as last read: the cancel checks it is pending
                ended = await self.tasks.cancel(task.id, GONE_MESSAGE, pending_only=True)
                if ended is not None:
                    cancelled.append(ended.id)
        if cancelled:
            log.info("client gone: its pending tasks are cancelled", tasks=cancelled)
        return cancelled
