"""`GET /metrics`: the queue as Prometheus sees it, read from the task table at each scrape.

Every number comes from the database, not from this process's memory, so each API replica
reports the same queue and a scaler can read any of them: tasks pending and processing per
model, how long the oldest pending one has waited, how many workers hold tasks, and the
callbacks still to be delivered. Scale workers on `darkroom_tasks{status="pending"}` or on
`darkroom_oldest_pending_seconds`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from darkroom.clock import utcnow
from darkroom.contract import Status
from darkroom.metrics import ApiMetrics
from darkroom.tasks.outbox import Outbox
from darkroom.tasks.stats import QueueDepth
from darkroom.tasks.workers import WorkerInfo
from darkroom.tracing import NoTracing

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from darkroom.api.services import Services

# What Prometheus's scraper asks for (text exposition format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Snapshot:
    """One scrape's figures, handed to prometheus_client as a collector."""

    def __init__(
        self,
        models: list[str],
        depth: QueueDepth,
        callbacks_pending: int,
        live: list[WorkerInfo],
        unserved: dict[str, int],
    ) -> None:
        self.models = models
        self.depth = depth
        self.callbacks_pending = callbacks_pending
        self.live = live
        self.unserved = unserved

    def collect(self) -> Iterator[Metric]:
        now = utcnow()
        models = sorted(set(self.models) | {model for model, _ in self.depth.counts})
        tasks = GaugeMetricFamily(
            "darkroom_tasks", "Unfinished tasks by model and status.", labels=["model", "status"]
        )
        oldest = GaugeMetricFamily(
            "darkroom_oldest_pending_seconds",
            "Age of the oldest pending task (0 when none waits).",
            labels=["model"],
        )
        workers = GaugeMetricFamily(
            "darkroom_busy_workers", "Workers holding at least one task.", labels=["model"]
        )
        for model in models:
            for status in (Status.PENDING, Status.PROCESSING):
                count = self.depth.counts.get((model, status.value), 0)
                tasks.add_metric([model, status.value], count)
            since = self.depth.oldest_pending.get(model)
            oldest.add_metric([model], (now - since).total_seconds() if since else 0.0)
            workers.add_metric([model], self.depth.busy_workers.get(model, 0))
        yield tasks
        yield oldest
        yield workers
        yield GaugeMetricFamily(
            "darkroom_callbacks_pending",
            "Callbacks queued or waiting for a retry.",
            value=self.callbacks_pending,
        )
        yield from self._workers(models)

    def _workers(self, models: list[str]) -> Iterator[Metric]:
        known = GaugeMetricFamily(
            "darkroom_workers",
            "Live workers (seen within a lease) by model and state.",
            labels=["model", "state"],
        )
        for model in sorted(set(models) | {w.model for w in self.live}):
            for state in ("idle", "busy"):
                count = sum(1 for w in self.live if w.model == model and w.state == state)
                known.add_metric([model, state], count)
        yield known
        unserved = GaugeMetricFamily(
            "darkroom_pending_without_worker",
            "Pending tasks of a model that no live worker serves (alert when above 0).",
            labels=["model"],
        )
        for model in models:
            unserved.add_metric([model], self.unserved.get(model, 0))
        yield unserved


async def render(services: Services) -> bytes:
    depth = await services.stats.queue_depth()
    callbacks_pending = await Outbox(services.db).pending_count()
    live = await services.workers.live(services.settings.lease_s)
    # Pending counts are in the depth read already: no second query over the task table.
    served = {w.model for w in live}
    unserved = {
        model: count
        for (model, status), count in depth.counts.items()
        if status == Status.PENDING.value and count and model not in served
    }
    registry = CollectorRegistry(auto_describe=False)
    models = list(services.settings.models)
    registry.register(_Snapshot(models, depth, callbacks_pending, live, unserved))
    registry.register(_ThisProcess(services.rate_limiter.fallbacks))
    registry.register(services.metrics.registry)  # requests and callbacks, this process's
    return generate_latest(registry)


class RequestObserver:
    """Times every HTTP request into `darkroom_http_request_duration_seconds`, labelled by the
    route's template (`/v1/tasks/{task_id}`, never the id: a series per task would swamp
    Prometheus) and the status answered; with tracing on, also makes the request's span, named
    the same way and continuing the client's `traceparent` (a task created inside it carries
    it). Pure ASGI, like RequestIdMiddleware."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, tracing: NoTracing) -> None:
        self.app = app
        self.metrics = metrics
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif not self.tracing.enabled:  # no span object at all
            await self._observe(scope, receive, send, None)
        else:
            given = dict(scope["headers"]).get(b"traceparent", b"").decode("latin-1") or None
            with self.tracing.span(f"{scope['method']} request", parent=given) as span:
                await self._observe(scope, receive, send, span)

    async def _observe(self, scope: Scope, receive: Receive, send: Send, span: Span | None) -> None:
        started = time.perf_counter()
        status = 500  # what the client sees if the app fails before answering

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            method, route = scope["method"], getattr(scope.get("route"), "path", "unmatched")
            self.metrics.http_seconds.labels(method, route, str(status)).observe(
                time.perf_counter() - started
            )
            if span is not None:
                span.update_name(f"{method} {route}")
                span.set_attribute("http.request.method", method)
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                request_id = scope.get("state", {}).get("request_id")
                if request_id:
                    span.set_attribute("darkroom.request_id", request_id)


class _ThisProcess:
    """Figures of the API process that answers the scrape (each process has its own)."""

    def __init__(self, fallbacks: int) -> None:
        self.fallbacks = fallbacks

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "darkroom_rate_limit_fallbacks",
            "Requests this process rate-limited by itself because Redis did not answer.",
            value=self.fallbacks,
        )
