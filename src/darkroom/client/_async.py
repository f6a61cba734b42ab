"""The asyncio client: `Client` (`_sync.py`) line for line, with `await`."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from darkroom.client._base import (
    DEFAULT_MODEL,
    ClientConfig,
    ProgressCallback,
    Task,
    TaskPage,
    checked,
    generation_body,
    has_no_events,
    list_params,
    new_idempotency_key,
    poll_interval_s,
    result_path,
    retry_delay_s,
)
from darkroom.client.errors import APIConnectionError, TaskFailed, error_from_response
from darkroom.client.sse import EventParser, aevents


class AsyncClient:
    """darkroom's API (or the hosted krea-2-turbo one: same contract) from Python.

        async with AsyncClient() as client:  # DARKROOM_URL, DARKROOM_API_KEY
            task = await client.images.generate("a red fox in fresh snow", size="16:9")
            await client.tasks.download(task.id, "fox.png")

    429 and 5xx answers and broken connections are retried `max_retries` times, after the
    server's `Retry-After` where it sends one (429s only if `retry_rate_limited`); a create
    carries an `Idempotency-Key`, so its retry is never charged twice. `transport` replaces httpx's (tests, proxies, mocks).
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        retry_rate_limited: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = ClientConfig.resolve(
            api_key, base_url, timeout, max_retries, retry_rate_limited
        )
        self.http = httpx.AsyncClient(transport=transport, **self.config.client_kwargs())
        self.images = AsyncImages(self)
        self.tasks = AsyncTasks(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def credits(self) -> dict[str, Any]:
        """`GET /v1/credits`: the key's and its account's balances (200 proves the key)."""
        body: dict[str, Any] = (await self.request("GET", "/v1/credits")).json()
        return body

    async def request(
        self, method: str, url: str, *, signed_link: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """One call, retried as the class says; a typed error for an error answer.
        `signed_link`: a result link, sent without the key (it may lead to a bucket)."""
        attempt = 0
        while True:
            request = self.http.build_request(method, url, **kwargs)
            if signed_link:
                del request.headers["authorization"]
            response: httpx.Response | None = None
            try:
                response = await self.http.send(request)
            except httpx.TransportError as exc:
                if not self.config.should_retry(attempt, None):
                    raise APIConnectionError(f"{method} {url}: {exc!r}") from exc
            else:
                if not self.config.should_retry(attempt, response):
                    return checked(response)
            await asyncio.sleep(retry_delay_s(attempt, response))
            attempt += 1


class AsyncImages:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def generate(
        self,
        prompt: str,
        *,
        model: str = DEFAULT_MODEL,
        size: str | None = None,
        quality: str | None = None,
        seed: int | None = None,
        nsfw_check: bool | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        """Queue a generation; the task comes back `pending` with its `estimated_time`."""
        body = generation_body(
            prompt,
            model=model,
            size=size,
            quality=quality,
            seed=seed,
            nsfw_check=nsfw_check,
            callback_url=callback_url,
        )
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        response = await self._client.request(
            "POST", "/v1/images/generations", json=body, headers=headers
        )
        return Task.from_body(response.json())


class AsyncTasks:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def get(self, task_id: str) -> Task:
        response = await self._client.request("GET", f"/v1/tasks/{task_id}")
        return Task.from_body(response.json())

    async def cancel(self, task_id: str) -> Task:
        """Cancel a pending task (a darkroom extension): it ends `failed` with
        `request_cancelled` and its credits come back. `TaskNotCancellable` (409) when it is
        generating or has ended, or its model's tasks cannot be cancelled (`task.can_cancel`)."""
        response = await self._client.request("POST", f"/v1/tasks/{task_id}/cancel")
        return Task.from_body(response.json())

    async def list(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> TaskPage:
        """One page of this key's tasks, newest first (a darkroom extension); pass the page's
        `next_cursor` as `cursor` for the next."""
        params = list_params(status, limit, cursor)
        response = await self._client.request("GET", "/v1/tasks", params=params)
        return TaskPage.from_body(response.json())

    async def wait(
        self,
        task_id: str,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the same signature as Client's)
    ) -> Task:
        """The task once `completed` (TaskFailed if it fails), calling `on_progress` with each
        state on the way: from the server's event stream, or by polling where it has none.
        TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        task = await self._stream(task_id, on_progress, deadline)
        if task is None:
            task = await self._poll(task_id, on_progress, deadline)
        if task.status == "failed":
            raise TaskFailed(task.raw)
        return task

    async def download(self, task: str | Task, path: str | Path | None = None) -> Path:
        """The task's image saved to `path` (a file, or a folder for `<task id>.png`; default:
        the current folder), waiting for the task first if it has not finished."""
        found = task if isinstance(task, Task) else await self.get(task)
        if found.status != "completed":
            found = await self.wait(found.id)
        target = result_path(found, path)
        image = (await self._client.request("GET", found.results[0], signed_link=True)).content
        partial = target.with_name(f".{target.name}.part")
        partial.write_bytes(image)
        partial.replace(target)
        return target

    async def _stream(
        self, task_id: str, on_progress: ProgressCallback | None, deadline: float | None
    ) -> Task | None:
        """The finished task from the events stream, reconnecting with Last-Event-ID after a
        broken or ended stream; None if the server has no stream."""
        parser, attempt = EventParser(), 0
        while True:
            _check(deadline)
            headers = {"Accept": "text/event-stream"}
            if parser.last_id is not None:
                headers["Last-Event-ID"] = parser.last_id
            try:
                async with self._client.http.stream(
                    "GET", f"/v1/tasks/{task_id}/events", headers=headers
                ) as response:
                    if response.status_code == 204:  # we saw its last event already
                        return await self.get(task_id)
                    if response.is_error or "text/event-stream" not in response.headers.get(
                        "content-type", ""
                    ):
                        await response.aread()
                        if not response.is_error:
                            return None
                        error = error_from_response(response)
                        if has_no_events(error):
                            return None
                        if not self._client.config.should_retry(attempt, response):
                            raise error
                        await asyncio.sleep(retry_delay_s(attempt, response))
                        attempt += 1
                        continue
                    async for event in aevents(response.aiter_lines(), parser):
                        attempt = 0
                        task = Task.from_body(json.loads(event.data))
                        if on_progress is not None:
                            on_progress(task)
                        if task.done:
                            return task
            except httpx.TransportError as exc:
                if not self._client.config.should_retry(attempt, None):
                    raise APIConnectionError(f"events of {task_id}: {exc!r}") from exc
                await asyncio.sleep(retry_delay_s(attempt, None))
                attempt += 1
            # The stream ended before the task (its server is going away): reconnect.

    async def _poll(
        self, task_id: str, on_progress: ProgressCallback | None, deadline: float | None
    ) -> Task:
        while True:
            task = await self.get(task_id)
            if on_progress is not None:
                on_progress(task)
            if task.done:
                return task
            _check(deadline)
            await asyncio.sleep(poll_interval_s(task))


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError("the task did not finish in time")
