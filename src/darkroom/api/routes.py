"""The contract's endpoints: create a generation task, query a task, fetch a result file."""

from __future__ import annotations

import re
import time
from typing import Any

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from darkroom.accounts.store import Principal
from darkroom.api.body import body_hash, read_json
from darkroom.api.deps import caller, services_of
from darkroom.api.limits import RateState
from darkroom.api.openapi import error_responses, task_responses
from darkroom.api.schemas import parse_generation_request
from darkroom.api.services import Services
from darkroom.billing.money import to_credits
from darkroom.contract import (
    TASK_ID_PREFIX,
    is_task_id,
)
from darkroom.errors import (
    InvalidRequest,
    InvalidTaskId,
    PermissionDenied,
    TaskNotFound,
)
from darkroom.service.cancel import can_cancel
from darkroom.service.submit import Submitted
from darkroom.storage.local import InvalidKey, LocalStorage
from darkroom.tasks.estimate import estimate_s
from darkroom.tasks.model import IdempotencyKey, Task
from darkroom.tasks.render import render_task
from darkroom.wire import CreditsBody

router = APIRouter()


@router.post(
    "/v1/images/generations",
    summary="Create an image generation task",
    description="Queues a task and answers at once with it (`pending`, an `estimated_time`, "
    "the credits reserved). Send `Idempotency-Key` to retry safely: a repeat with the same key "
    "and body answers the first task as it stands, flagged `idempotency_replayed`.",
    response_model=None,
    responses=task_responses(400, 401, 402, 403, 413, 429, 500, 503),
)
async def create_generation(request: Request) -> JSONResponse:
    """Parse, submit, render: the use case is `darkroom.service.submit`."""
    services = services_of(request)
    principal = await caller(request, services)
    refuse_openai_package(request)
    settings, base = services.settings, str(request.base_url)
    rate = await services.rate_limiter.hit(principal.key_id, principal.limits.rate_limit, "create")
    raw = await read_json(request, settings.max_body_bytes, settings.body_timeout_s)
    order = parse_generation_request(raw)
    submitted = await services.submitter.submit(
        order, principal, idempotency=idempotency_key(request, raw), link_base=base
    )
    structlog.contextvars.bind_contextvars(task_id=submitted.task.id)  # this request's lines
    body = await render_submitted(submitted, principal.user_group, services, base)
    return JSONResponse(body, headers=rate.headers())


# The `openai` packages name themselves so (`OpenAI/Python 3.x`, `AsyncOpenAI/Python`,
# `OpenAI/JS`). Pointed at this route they would queue a task, be charged for it, and read
# `data: null` from its answer: refused, pointing to the route that speaks their protocol.
_OPENAI_PACKAGE = re.compile(r"^(Async)?(Azure)?OpenAI/")


def refuse_openai_package(request: Request) -> None:
    if _OPENAI_PACKAGE.match(request.headers.get("user-agent", "")):
        raise InvalidRequest(
            "This is the krea-2-turbo task API: it answers a task to poll, not images, so the "
            "openai package would get none. For the OpenAI Images API set base_url to "
            f"{str(request.base_url).rstrip('/')}/openai/v1"
        )


async def render_submitted(
    submitted: Submitted, user_group: str, services: Services, base: str
) -> dict[str, Any]:
    """A new task as created; a replayed one as it stands now, flagged as the hosted API does."""
    if submitted.replayed:
        body = await render_now(submitted.task, user_group, services, base)
        return body | {"idempotency_replayed": True}
    return render_task(
        submitted.task,
        user_group=user_group,
        results=[],
        estimated_time=submitted.estimate,
        queue_position=submitted.queue_position,
        can_cancel=can_cancel(submitted.task, services.settings),
    )


def idempotency_key(request: Request, raw: dict[str, Any]) -> IdempotencyKey | None:
    """The request's Idempotency-Key, bound to a hash of its body (key order and spacing aside)."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not key or len(key) > 255 or not key.isprintable():
        raise InvalidRequest(
            "Idempotency-Key must be 1 to 255 printable characters", param="Idempotency-Key"
        )
    return IdempotencyKey(key, body_hash(raw))


@router.get(
    "/v1/tasks/{task_id}",
    summary="Query a task",
    description="The task as it stands: `progress` rises while `processing`; once `completed`, "
    "`results` holds links valid 24 hours; once `failed`, `error.code` says why.",
    response_model=None,
    responses=task_responses(400, 401, 403, 404, 429, 500),
)
async def get_task(task_id: str, request: Request) -> JSONResponse:
    services = services_of(request)
    principal = await caller(request, services)
    task, rate = await query_own_task(task_id, principal, services)
    body = await render_now(task, principal.user_group, services, str(request.base_url))
    return JSONResponse(body, headers=rate.headers())


async def query_own_task(
    task_id: str, principal: Principal, services: Services
) -> tuple[Task, RateState]:
    """A query of the caller's task of this id (counted against its query rate), or the
    contract's 429, 400, 404 or 403."""
    rate = await services.rate_limiter.hit(
        principal.key_id, services.settings.query_rate_limit, "query"
    )
    structlog.contextvars.bind_contextvars(task_id=task_id)  # this request's lines
    if not task_id.startswith(TASK_ID_PREFIX):
        raise InvalidTaskId()
    task = await services.tasks.get(task_id) if is_task_id(task_id) else None
    if task is None:
        raise TaskNotFound()
    if task.account_id != principal.account_id:
        raise PermissionDenied()
    return task, rate


async def render_now(task: Task, user_group: str, services: Services, base: str) -> dict[str, Any]:
    """The task as it stands: links if completed, a fresh estimate (and, pending, its place in
    the queue: the tasks the claim takes before it, plus one) if not finished."""
    estimate = position = None
    if not task.status.is_terminal():
        stats = await services.queue.queue_stats(
            task.model, task.account_id, before=task.created_at
        )
        estimate = estimate_s(stats, task.quality, task.status, task.progress)
        position = sum(stats.ahead.values()) + 1
    return render_task(
        task,
        user_group=user_group,
        results=services.links.for_task(task, base),
        estimated_time=estimate,
        queue_position=position,
        can_cancel=can_cancel(task, services.settings),
    )


@router.get(
    "/v1/credits",
    summary="The key's and its account's credits",
    description="`token`: the calling key's own limit and use; `user`: its account's.",
    response_model=None,
    responses=error_responses(401, 429, 500, ok={"model": CreditsBody, "description": "Balances"}),
)
async def get_credits(request: Request, response: Response) -> dict[str, Any]:
    """The calling key's own limit and use, and its account's balance and use."""
    services = services_of(request)
    principal = await caller(request, services)
    rate = await services.rate_limiter.hit(
        principal.key_id, services.settings.query_rate_limit, "query"
    )
    response.headers.update(rate.headers())
    credits = await services.accounts.credits(principal.key_id)
    return {
        "success": True,
        "message": "",
        "data": {
            "token": {
                "remaining_credits": to_credits(credits.key_remaining_micro),
                "unlimited_credits": credits.key_limit_micro is None,
                "used_credits": to_credits(credits.key_used_micro),
            },
            "user": {
                "remaining_credits": to_credits(credits.account_balance_micro),
                "used_credits": to_credits(credits.account_used_micro),
            },
        },
    }


@router.get(
    "/v1/files/{key:path}",
    summary="A result image, through its signed link",
    description="The links in a task's `results` lead here; no key is needed, the signature "
    "is the permission.",
    response_model=None,
    response_class=FileResponse,
    responses=error_responses(
        400, 403, 404, 500, ok={"content": {"image/png": {"schema": {"type": "string"}}}}
    ),
)
async def get_file(key: str, request: Request, expires: int = 0, signature: str = "") -> Any:
    """A stored result, reachable only through a signed, unexpired link."""
    services = services_of(request)
    path = f"/v1/files/{key}"
    if not services.signer.is_authentic(path, expires, signature):
        raise PermissionDenied("Invalid result link signature")
    if expires < time.time():
        raise TaskNotFound("This result link has expired")
    if not isinstance(services.storage, LocalStorage):  # a bucket's links go to the bucket
        raise TaskNotFound("No such result")
    try:
        file = services.storage.path_for(key)
    except InvalidKey:
        raise TaskNotFound("No such result") from None
    if not file.is_file():
        raise TaskNotFound("No such result")
    return FileResponse(file, media_type="image/png", headers={"Cache-Control": "private"})
