"""The OpenAI Images API at `/openai/v1`, so `OpenAI(base_url=".../openai/v1", api_key=<a
darkroom key>)` works unchanged: images generated synchronously, and the models listed.

Only HTTP lives here: the use case is `darkroom.service.images` (over the same create as the
task route), the wire `api.openai_wire`. Errors keep darkroom's body, which is OpenAI's shape
(`{"error": {"message", "type", "param", "code"}}`), so the `openai` package raises the right
class with `code` and `param` set. Answers the package must not retry say `x-should-retry:
false`; back-pressure (429, 503) carries `retry-after`, which it honours up to 120 s.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from contextlib import suppress
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.types import Message

from darkroom.api.body import body_hash, read_json
from darkroom.api.deps import caller, services_of
from darkroom.api.events import StreamSlots, TaskWatch
from darkroom.api.openai_wire import (
    ImageRequest,
    ImagesResponse,
    Model,
    ModelList,
    parse_image_request,
)
from darkroom.api.openapi import error_responses
from darkroom.api.services import Services
from darkroom.contract import SEED_MAX, FailureCode, Status
from darkroom.errors import (
    DarkroomError,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServiceUnavailable,
)
from darkroom.service.images import ImageRequests, Waited
from darkroom.service.submit import GenerationOrder
from darkroom.tasks.model import Task

PREFIX = "/openai/v1"
TAG = "OpenAI-compatible"
router = APIRouter(prefix=PREFIX, tags=[TAG])

NO_RETRY = {"x-should-retry": "false"}
MAX_RETRY_AFTER_S = 120


class WaitExpired(DarkroomError):
    """The images were not ready in time."""

    status = 504
    code = "timeout"
    type = "api_error"

    def __init__(self, task_ids: list[str], waited_s: float) -> None:
        super().__init__(
            f"The images were not ready within {waited_s:g} s. Their tasks go on: "
            f"GET /v1/tasks/{{id}} for {', '.join(task_ids)}"
        )
        self.task_ids = task_ids

    def to_body(self) -> dict[str, Any]:
        body = super().to_body()
        body["error"]["task_ids"] = self.task_ids
        return body

    def headers(self) -> dict[str, str]:
        return dict(NO_RETRY)


class Draining(DarkroomError):
    """This server is shutting down; retry, and the same tasks are answered."""

    status = 503
    code = "service_unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class TaskFailed(DarkroomError):
    """Every image of the request failed, for a reason on the server's side: the first one's
    business code, and a 500 the `openai` package retries (with new tasks)."""

    type = "server_error"

    def __init__(self, task: Task) -> None:
        super().__init__(f"{task.error_message or 'The generation failed'} (task {task.id})")
        self.business_code = (task.error_code or FailureCode.UNKNOWN_ERROR).value

    def to_body(self) -> dict[str, Any]:
        body = super().to_body()
        body["error"]["code"] = self.business_code
        return body


class TaskRefused(TaskFailed):
    """Every image of the request failed for a reason of the request's (its content, a
    cancel): a 400, not retried."""

    status = 400
    type = "invalid_request_error"

    def headers(self) -> dict[str, str]:
        return dict(NO_RETRY)


class ClientGone(InvalidRequest):
    """The client disconnected before its images were ready."""


@router.post(
    "/images/generations",
    summary="Generate images (OpenAI Images API)",
    description="OpenAI's `images.generate`, answered when the images are made: `n` tasks on "
    "the same queue, keys and credits as `POST /v1/images/generations`. Past the server's wait "
    "(`DARKROOM_OPENAI_WAIT_S`) the answer is 504 naming the task ids, which go on. A client "
    "that disconnects gets its tasks that have not started cancelled and refunded. A request "
    "the `openai` package retries (`x-stainless-retry-count` above 0) is answered with the first "
    "attempt's tasks: never generated or charged twice.",
    response_model=None,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": ImageRequest.model_json_schema(
                        ref_template="#/components/schemas/{model}"
                    )
                }
            },
        }
    },
    responses=error_responses(
        400,
        401,
        402,
        403,
        413,
        429,
        500,
        503,
        504,
        ok={"model": ImagesResponse, "description": "The images"},
    ),
)
async def generate_images(request: Request) -> JSONResponse:
    try:
        return await _generate(request)
    except (RateLimited, ServiceUnavailable) as busy:
        # The package honours a Retry-After of up to 120 s, and past that does not retry at all.
        if busy.retry_after is not None and busy.retry_after > MAX_RETRY_AFTER_S:
            busy.retry_after = MAX_RETRY_AFTER_S
        raise


async def _generate(request: Request) -> JSONResponse:
    services = services_of(request)
    principal = await caller(request, services)
    settings = services.settings
    rate = await services.rate_limiter.hit(principal.key_id, principal.limits.rate_limit, "create")
    raw = await read_json(request, settings.max_body_bytes, settings.body_timeout_s)
    parsed = parse_image_request(raw, settings.openai_max_n)
    orders = _orders(parsed, default_model=next(iter(settings.models)))
    slots: StreamSlots = request.app.state.stream_slots
    slot = slots.take(principal.key_id)  # a waiting request holds a socket, as a stream does
    try:
        images: ImageRequests = request.app.state.image_requests
        tasks = await images.start(
            orders,
            principal,
            request_hash=body_hash(raw),
            is_retry=_retry_count(request) > 0,
            link_base=str(request.base_url),
        )
        waited = await _wait(request, images, tasks, settings.openai_wait_s)
    finally:
        slot.release()
    body = await _render(waited, parsed.response_format or "b64_json", services, request)
    return JSONResponse(body, headers=rate.headers())


def _orders(parsed: ImageRequest, default_model: str) -> list[GenerationOrder]:
    """One order per image, seeds consecutive (drawn here when not given, so they are)."""
    ratio, quality = parsed.shape()
    n = parsed.n or 1
    first = parsed.seed if parsed.seed else secrets.randbelow(SEED_MAX - n + 1) + 1
    return [
        GenerationOrder(
            model=parsed.model or default_model,
            prompt=parsed.prompt,
            size=ratio,
            quality=quality,
            seed=first + index,
            nsfw_check=bool(parsed.nsfw_check),
            callback_url=None,
        )
        for index in range(n)
    ]


def _retry_count(request: Request) -> int:
    try:
        return int(request.headers.get("x-stainless-retry-count", "0"))
    except ValueError:
        return 0


async def _wait(
    request: Request, images: ImageRequests, tasks: list[Task], deadline_s: float
) -> Waited:
    """Wait for the tasks; a client gone meanwhile gets its pending ones cancelled, a server
    draining answers 503 (a retry, here or on another server, joins the same tasks)."""
    watch: TaskWatch = request.app.state.image_watch
    draining: asyncio.Event = request.app.state.draining
    gone, interrupted = asyncio.Event(), asyncio.Event()

    async def until_gone() -> None:
        message: Message = {"type": ""}
        while message["type"] != "http.disconnect":
            message = await request.receive()
        gone.set()
        interrupted.set()

    async def until_draining() -> None:
        await draining.wait()
        interrupted.set()

    watchers = [asyncio.create_task(until_gone()), asyncio.create_task(until_draining())]
    try:
        waited = await images.wait(tasks, watch.next_read, deadline_s=deadline_s, gone=interrupted)
    finally:
        for watcher in watchers:
            watcher.cancel()
            with suppress(asyncio.CancelledError):
                await watcher
    if gone.is_set():
        await images.abandon(waited.tasks)
        raise ClientGone()
    if not waited.finished and draining.is_set():
        raise Draining()
    elif not waited.finished:
        raise WaitExpired([t.id for t in waited.tasks], deadline_s)
    return waited


async def _render(
    waited: Waited, response_format: str, services: Services, request: Request
) -> dict[str, Any]:
    """OpenAI's body of the completed images; if none completed, the first failure."""
    completed = [t for t in waited.tasks if t.status is Status.COMPLETED]
    if not completed:
        failed = next(t for t in waited.tasks if t.status is Status.FAILED)
        code = failed.error_code or FailureCode.UNKNOWN_ERROR
        raise TaskRefused(failed) if code.is_client_side() else TaskFailed(failed)
    data = []
    for task in completed:
        image: dict[str, Any] = {"revised_prompt": None, "seed": task.seed, "task_id": task.id}
        if response_format == "url":
            image["url"] = services.links.for_task(task, str(request.base_url))[0]
        else:
            png = await asyncio.to_thread(services.storage.get, task.result_keys[0])
            image["b64_json"] = base64.b64encode(png).decode("ascii")
        data.append(image)
    return {
        "created": int(completed[0].created_at.timestamp()),
        "data": data,
        "output_format": "png",
    }


@router.get(
    "/models",
    summary="The served models (OpenAI Models API)",
    response_model=None,
    responses=error_responses(401, 429, 500, ok={"model": ModelList, "description": "Models"}),
)
async def list_models(request: Request) -> JSONResponse:
    services = services_of(request)
    principal = await caller(request, services)
    rate = await services.rate_limiter.hit(
        principal.key_id, services.settings.query_rate_limit, "query"
    )
    served = [_model(name) for name in services.settings.models if principal.limits.allows(name)]
    return JSONResponse(ModelList(data=served).model_dump(), headers=rate.headers())


@router.get(
    "/models/{model_id:path}",
    summary="One served model (OpenAI Models API)",
    response_model=None,
    responses=error_responses(401, 404, 429, 500, ok={"model": Model, "description": "Model"}),
)
async def get_model(model_id: str, request: Request) -> JSONResponse:
    services = services_of(request)
    principal = await caller(request, services)
    rate = await services.rate_limiter.hit(
        principal.key_id, services.settings.query_rate_limit, "query"
    )
    if model_id not in services.settings.models or not principal.limits.allows(model_id):
        raise NotFound(f"No such model: {model_id}")
    return JSONResponse(_model(model_id).model_dump(), headers=rate.headers())


def _model(name: str) -> Model:
    return Model(id=name, created=0, owned_by="darkroom")


def install_openai(app: Any, services: Services) -> None:
    """The `/openai/v1` routes; after `install_events`, whose stream slots they share."""
    app.state.image_requests = ImageRequests(
        services.submitter, services.tasks, services.settings.openai_retry_window_s, services.clock
    )
    # Its own watch, read more often than the event streams': a waiting client gets its images
    # within this interval of their completion.
    app.state.image_watch = TaskWatch(services.tasks, services.settings.openai_poll_interval_s)
    app.include_router(router)
