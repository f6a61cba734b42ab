"""Delivers the callback outbox: in every API process, many deliveries at once, none twice.

Each attempt: render the task as `GET /v1/tasks/{id}` would, sign it (Standard Webhooks),
resolve the host and check every answer again, POST to the checked address, record the
outcome. 2xx is delivered; anything else (3xx included, never followed), a refusal, a network
error or the 10 s timeout is a failed attempt, retried after 1, 2 and 4 s. The pool is
shared out by `callbacks/lanes.py`: per account, per receiving host, and a slow lane.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpcore
import structlog
from standardwebhooks import Webhook

from darkroom.accounts.store import AccountStore
from darkroom.callbacks import http
from darkroom.callbacks.lanes import Lanes, host_of
from darkroom.callbacks.policy import CallbackRefused, Resolver, parse, resolve_allowed
from darkroom.clock import Clock, SystemClock
from darkroom.metrics import ApiMetrics
from darkroom.settings import Settings
from darkroom.tasks.outbox import Delivery, Outbox
from darkroom.tasks.render import ResultLinks, render_task
from darkroom.tasks.store import TaskStore
from darkroom.tracing import NoTracing

log = structlog.get_logger("darkroom.callbacks")

# Longer than one attempt can take, so a live sender's row is never taken from it.
LOCK_S = 3 * http.ATTEMPT_TIMEOUT_S
USER_AGENT = "darkroom-callbacks/1"
# A callback claimed beyond its host's share is due again this much later, unattempted.
DEFER_S = 1.0


@dataclass(frozen=True, slots=True)
class SenderPolicy:
    """What the sender reads of the settings, made once at the composition root."""

    concurrency: int
    share: float  # of `concurrency`, per account and per receiving host
    poll_interval_s: float
    allow_private: bool
    ca_file: Path | None

    @classmethod
    def from_settings(cls, settings: Settings) -> SenderPolicy:
        return cls(
            concurrency=settings.callback_concurrency,
            share=settings.callback_share,
            poll_interval_s=settings.callback_poll_interval_s,
            allow_private=settings.callback_allow_private,
            ca_file=settings.callback_ca_file,
        )


class CallbackSender:
    """Its collaborators come through the constructor: the outbox it drains, the stores and
    links a task's body is rendered from, the resolver it checks hosts with, and the clock its
    retry schedule runs on."""

    def __init__(
        self,
        policy: SenderPolicy,
        outbox: Outbox,
        tasks: TaskStore,
        accounts: AccountStore,
        links: ResultLinks,
        resolver: Resolver,
        *,
        clock: Clock | None = None,
        sender_id: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        metrics: ApiMetrics | None = None,
        tracing: NoTracing | None = None,
    ) -> None:
        self.policy = policy
        self.outbox = outbox
        self.tasks = tasks
        self.accounts = accounts
        self.links = links
        self.resolver = resolver
        self.clock = clock or SystemClock()
        self.sender_id = sender_id or f"{socket.gethostname()}:{os.getpid()}:sender"
        self.ssl_context = ssl_context or http.tls_context(policy.ca_file)
        self.lanes = Lanes(policy.concurrency, policy.share)
        self.metrics = metrics or ApiMetrics()
        self.tracing = tracing or NoTracing()
        self._running: set[asyncio.Task[None]] = set()

    async def run_forever(self) -> None:
        idle_s = self.policy.poll_interval_s
        try:
            while True:
                wait_s = idle_s
                try:
                    await self.run_once()
                    # Sleep until the next retry falls due (so 1, 2, 4 s stay 1, 2, 4 s), but
                    # look at least every idle interval for callbacks of newly ended tasks.
                    due = await self.outbox.next_due()
                    if due is not None:
                        wait_s = min(idle_s, max(0.02, (due - self.clock.now()).total_seconds()))
                except Exception:
                    log.exception("claiming callbacks failed; retrying next interval")
                await self.clock.sleep(wait_s)
        finally:
            for running in self._running:
                running.cancel()

    async def run_once(self) -> int:
        """Start deliveries for the callbacks due now (up to free slots, each account and host
        within its share); returns how many started."""
        free = self.policy.concurrency - len(self._running)
        if free <= 0:
            return 0
        now = self.clock.now()
        due_at = await self.outbox.next_due()  # a read first: the common answer is "nothing"
        if due_at is None or due_at > now:
            return 0
        due = await self.outbox.claim_due(
            self.sender_id,
            limit=free,
            lock_s=LOCK_S,
            now=now,
            per_account=self.lanes.per_party,
            busy=self.lanes.by_account,
        )
        deferred = []
        for delivery in due:
            host = host_of(delivery.url)
            if not self.lanes.admits(host, time.monotonic()):
                deferred.append(delivery)
                continue
            slow = self.lanes.start(delivery.account_id, host, time.monotonic())
            running = asyncio.create_task(self.deliver(delivery, host=host, slow=slow))
            self._running.add(running)
            running.add_done_callback(self._running.discard)
        if deferred:
            until = now + timedelta(seconds=DEFER_S)
            await self.outbox.defer(deferred, self.sender_id, until=until)
        return len(due) - len(deferred)

    async def drain(self) -> None:
        """Wait for the deliveries in flight (tests and shutdown)."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def deliver(self, delivery: Delivery, *, host: str = "", slow: bool = False) -> None:
        timed_out = False
        try:
            try:
                delivered, error, timed_out = await self._attempt(delivery)
            except Exception as exc:  # a bug must not kill the sender; the attempt failed
                log.exception("callback attempt crashed", task_id=delivery.task_id)
                delivered, error = False, f"internal error: {type(exc).__name__}"
            status = await self.outbox.record(
                delivery, self.sender_id, delivered=delivered, error=error, now=self.clock.now()
            )
            self.metrics.callback_attempt(status)
        finally:
            if host:
                self.lanes.end(
                    delivery.account_id, host, slow=slow, timed_out=timed_out,
                    now=time.monotonic(),
                )  # fmt: skip
        log.info(
            "callback attempt",
            task_id=delivery.task_id,
            attempt=delivery.attempts + 1,
            delivered=delivered,
            error=error or None,
            status=status,
            slow_lane=slow or None,
        )

    async def _attempt(self, delivery: Delivery) -> tuple[bool, str, bool]:
        """(delivered, error, whether the receiver timed out)."""
        task = await self.tasks.get(delivery.task_id)
        if task is None:
            return False, "the task no longer exists", False
        user_group = await self.accounts.user_group(task.account_id)
        body = render_task(
            task,
            user_group=user_group,
            results=self.links.for_task(task, task.link_base or ""),
            estimated_time=None,
        )
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        secret = await self.accounts.webhook_secret(task.account_id)
        timestamp = self.clock.now()  # the library reads it as UTC whatever its zone
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": delivery.webhook_id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": Webhook(secret).sign(delivery.webhook_id, timestamp, payload),
        }
        # In the task's trace, when it has one (made while tracing was on).
        tracing = self.tracing if task.trace_parent else NoTracing()
        attributes: dict[str, str | int] = {
            "darkroom.task_id": task.id,
            "darkroom.callback.attempt": delivery.attempts + 1,
        }
        with tracing.span("callback", parent=task.trace_parent, attributes=attributes) as span:
            outcome = await self._send(delivery, payload, headers)
            if span is not None:
                span.set_attribute("darkroom.callback.delivered", outcome[0])
                if outcome[1]:
                    span.set_attribute("darkroom.callback.error", outcome[1])
        return outcome

    async def _send(
        self, delivery: Delivery, payload: str, headers: dict[str, str]
    ) -> tuple[bool, str, bool]:
        allow_private = self.policy.allow_private
        try:
            target = parse(delivery.url, allow_private=allow_private)
            addresses = await resolve_allowed(target, self.resolver, allow_private=allow_private)
        except CallbackRefused as exc:
            return False, f"refused: {exc}", False
        try:
            answer = await http.post(
                target, addresses[0], payload.encode(), headers, ssl_context=self.ssl_context
            )
        except TimeoutError:
            return False, f"no answer within {http.ATTEMPT_TIMEOUT_S:g} s", True
        except httpcore.ConnectTimeout:
            return False, f"no connection within {http.CONNECT_TIMEOUT_S:g} s", True
        except httpcore.TimeoutException as exc:
            return False, f"{type(exc).__name__}: {exc}", True
        except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
            return False, f"{type(exc).__name__}: {exc}", False
        except (OSError, ssl.SSLError) as exc:
            return False, f"{type(exc).__name__}: {exc}", False
        if 200 <= answer.status < 300:
            return True, "", False
        return False, f"HTTP {answer.status}", False
