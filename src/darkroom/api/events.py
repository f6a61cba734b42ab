"""Live progress: `GET /v1/tasks/{id}/events`, the task as server-sent events.

Each event's data is the task's body exactly as a poll answers it, its `event` the task's
status, its `id` the task's state (attempt, status, progress). The stream ends after the
`completed` or `failed` event. Nothing about a stream lives in the process serving it: a
client that reconnects with `Last-Event-ID` (browsers' EventSource does it by itself), to this
process or another, gets only what changed since; one that already saw the end gets 204, which
also tells EventSource to stop reconnecting.

One `TaskWatch` per process reads every watched task in one query per tick, however many
streams are open. Streams are bounded (`StreamSlots`): per key and per process (429 with
Retry-After past either), and in lifetime (the server ends a stream after
`events_max_lifetime_s`; the client reconnects with `Last-Event-ID`), so no key can hold a
process's sockets, and no stream on a task that never ends lives for ever.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from darkroom.api.deps import caller, services_of
from darkroom.api.openapi import error_responses
from darkroom.api.routes import query_own_task, render_now
from darkroom.api.services import Services
from darkroom.errors import RateLimited
from darkroom.tasks.model import Task
from darkroom.tasks.store import TaskStore

router = APIRouter()

KEEPALIVE_S = 15.0  # a comment line this often keeps proxies from closing a quiet stream
RECONNECT_MS = 1000  # the `retry:` a client waits before reconnecting


class TaskWatch:
    """Fresh reads of watched tasks, batched: waiters of a tick share one query."""

    def __init__(self, tasks: TaskStore, interval_s: float) -> None:
        self.tasks = tasks
        self.interval_s = interval_s
        self._waiters: dict[str, list[asyncio.Future[Task | None]]] = {}
        self._ticker: asyncio.Task[None] | None = None

    async def next_read(self, task_id: str) -> Task | None:
        """The task as read at the next tick (None: it no longer exists)."""
        future: asyncio.Future[Task | None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(task_id, []).append(future)
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick_while_watched())
        try:
            return await future
        finally:
            waiting = self._waiters.get(task_id)
            if waiting is not None and future in waiting:
                waiting.remove(future)
                if not waiting:
                    del self._waiters[task_id]

    async def _tick_while_watched(self) -> None:
        while self._waiters:
            await asyncio.sleep(self.interval_s)
            due, self._waiters = self._waiters, {}
            try:
                found = await self.tasks.get_many(list(due))
            except Exception as exc:  # a database blip: every waiter sees it, streams end
                for futures in due.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                continue
            for task_id, futures in due.items():
                for future in futures:
                    if not future.done():
                        future.set_result(found.get(task_id))


class StreamSlots:
    """Open event streams of this process, counted per key and in all."""

    def __init__(self, per_key: int, total: int) -> None:
        self.per_key = per_key
        self.total = total
        self.open = 0
        self._by_key: dict[int, int] = {}

    def take(self, key_id: int) -> StreamSlot:
        """A slot for one more stream of `key_id`; RateLimited (429) when none is left."""
        if self._by_key.get(key_id, 0) >= self.per_key:
            raise RateLimited(
                f"Too many open event streams for this key (at most {self.per_key}): close one, "
                "or poll GET /v1/tasks/{id}",
                retry_after=5,
            )
        if self.open >= self.total:
            raise RateLimited("This server holds as many event streams as it can", retry_after=5)
        self.open += 1
        self._by_key[key_id] = self._by_key.get(key_id, 0) + 1
        return StreamSlot(self, key_id)

    def _give_back(self, key_id: int) -> None:
        self.open -= 1
        left = self._by_key[key_id] - 1
        if left:
            self._by_key[key_id] = left
        else:
            del self._by_key[key_id]


class StreamSlot:
    """One stream's place; given back once, whichever way the stream ends (its generator's
    end, or the response's background task when the client left before the first byte)."""

    def __init__(self, slots: StreamSlots, key_id: int) -> None:
        self._slots = slots
        self._key_id = key_id
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots._give_back(self._key_id)


def event_id(task: Task) -> str:
    """The task's state as an event id: any change of it is news to a client."""
    return f"{task.attempt}.{task.status.value}.{task.progress}"


def sse(event: str, data: dict[str, Any], id_: str) -> bytes:
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"id: {id_}\nevent: {event}\ndata: {payload}\n\n".encode()


@router.get(
    "/v1/tasks/{task_id}/events",
    summary="Stream a task's progress",
    description="Server-sent events: each event's `data` is the task's body as a poll returns "
    "it, its `event` the status (`pending`, `processing`, `completed`, `failed`). The stream "
    "ends after `completed` or `failed`. Reconnect with `Last-Event-ID` to get only what "
    "changed since; 204 once you have seen the end.",
    response_model=None,
    responses=error_responses(
        400,
        401,
        403,
        404,
        429,
        500,
        ok={
            "description": "The stream",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
    )
    | {204: {"description": "The Last-Event-ID given was the task's last event"}},
)
async def task_events(task_id: str, request: Request) -> Response:
    services = services_of(request)
    principal = await caller(request, services)
    task, rate = await query_own_task(task_id, principal, services)
    seen = request.headers.get("last-event-id")
    if task.status.is_terminal() and seen == event_id(task):
        return Response(status_code=204, headers=rate.headers())
    base = str(request.base_url)
    watch: TaskWatch = request.app.state.task_watch
    draining: asyncio.Event = request.app.state.draining
    slots: StreamSlots = request.app.state.stream_slots
    slot = slots.take(principal.key_id)
    ends_at = time.monotonic() + services.settings.events_max_lifetime_s

    async def stream() -> AsyncIterator[bytes]:
        current: Task | None = task
        last_sent, quiet_since = seen, time.monotonic()
        try:
            yield f"retry: {RECONNECT_MS}\n\n".encode()
            while current is not None:
                state = event_id(current)
                if state != last_sent:
                    body = await render_now(current, principal.user_group, services, base)
                    yield sse(current.status.value, body, state)
                    last_sent, quiet_since = state, time.monotonic()
                elif time.monotonic() - quiet_since > KEEPALIVE_S:
                    yield b": keep-alive\n\n"
                    quiet_since = time.monotonic()
                if current.status.is_terminal() or draining.is_set():
                    return  # a draining process hands its streams to another by their reconnect
                if time.monotonic() >= ends_at:
                    return  # lived its time: the client reconnects with Last-Event-ID
                current = await watch.next_read(current.id)
        finally:
            slot.release()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **rate.headers()}
    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers=headers,
        background=BackgroundTask(slot.release),
    )


def install_events(app: Any, services: Services) -> None:
    """The events route and its per-process watch."""
    app.state.task_watch = TaskWatch(services.tasks, services.settings.events_interval_s)
    app.state.draining = asyncio.Event()
    settings = services.settings
    app.state.stream_slots = StreamSlots(
        settings.events_max_streams_per_key, settings.events_max_streams
    )
    app.include_router(router)
