"""The contract's endpoints: create a generation task, query a task, fetch a result file."""

from __future__ import annotations

import math
import secrets
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from darkroom.api.body import read_json
from darkroom.api.deps import PrincipalDep, ServicesDep
from darkroom.api.schemas import parse_generation_request, render_task
from darkroom.api.services import Services
from darkroom.callbacks.policy import check_callback_url
from darkroom.contract import (
    PROMPT_TOKEN_LIMIT,
    SEED_MAX,
    TASK_ID_PREFIX,
    Status,
    is_task_id,
    new_task_id,
    pixel_size,
)
from darkroom.errors import (
    InvalidRequest,
    InvalidTaskId,
    ModelAccessDenied,
    PermissionDenied,
    RateLimited,
    TaskNotFound,
)
from darkroom.storage.local import InvalidKey
from darkroom.tasks.estimate import estimate_s, run_time_s
from darkroom.tasks.model import NewTask, Task
from darkroom.tasks.store import utcnow

router = APIRouter()


@router.post("/v1/images/generations")
async def create_generation(
    request: Request, response: Response, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    settings = services.settings
    rate = await services.rate_limiter.hit(principal.key_id, principal.limits.rate_limit, "create")
    response.headers.update(rate.headers())
    body = parse_generation_request(await read_json(request, settings.max_body_bytes))
    if body.model not in settings.models:
        raise InvalidRequest(f"Unknown model: {body.model}", param="model")
    if not principal.limits.allows(body.model):
        raise ModelAccessDenied(f"Token does not have access to model: {body.model}")
    if services.token_counter is not None:
        tokens = services.token_counter.count(body.prompt)
        if tokens > PROMPT_TOKEN_LIMIT:
            raise InvalidRequest(
                f"Prompt is too long: {tokens} tokens; the limit is {PROMPT_TOKEN_LIMIT}",
                param="prompt",
            )
    if body.callback_url is not None:
        check_callback_url(body.callback_url)
    size, quality = body.size_or_default, body.quality_or_default
    width, height = pixel_size(size, quality)
    stats = await services.tasks.queue_stats(body.model, quality)
    cap = principal.limits.max_concurrent or settings.default_max_concurrent
    if await services.tasks.unfinished_for_key(principal.key_id) >= cap:
        raise RateLimited(
            f"Too many unfinished tasks for this key (limit {cap}); wait for some to finish",
            retry_after=math.ceil(run_time_s(stats, quality)),
        )
    estimate = estimate_s(stats, quality, Status.PENDING, 0)
    now = utcnow()
    task = await services.tasks.create(
        NewTask(
            id=new_task_id(int(now.timestamp())),
            account_id=principal.account_id,
            api_key_id=principal.key_id,
            model=body.model,
            prompt=body.prompt,
            size=size,
            quality=quality,
            width=width,
            height=height,
            seed=body.seed or secrets.randbelow(SEED_MAX) + 1,
            nsfw_check=bool(body.nsfw_check),
            callback_url=body.callback_url,
            credits_reserved=settings.prices[body.model][quality.value],
            estimated_time=estimate,
            created_at=now,
        )
    )
    return render_task(task, user_group=principal.user_group, results=[], estimated_time=estimate)


@router.get("/v1/tasks/{task_id}")
async def get_task(
    task_id: str,
    request: Request,
    response: Response,
    principal: PrincipalDep,
    services: ServicesDep,
) -> dict[str, Any]:
    rate = await services.rate_limiter.hit(
        principal.key_id, services.settings.query_rate_limit, "query"
    )
    response.headers.update(rate.headers())
    if not task_id.startswith(TASK_ID_PREFIX):
        raise InvalidTaskId()
    task = await services.tasks.get(task_id) if is_task_id(task_id) else None
    if task is None:
        raise TaskNotFound()
    if task.account_id != principal.account_id:
        raise PermissionDenied()
    estimate = None
    if not task.status.is_terminal():
        stats = await services.tasks.queue_stats(task.model, task.quality, before=task.created_at)
        estimate = estimate_s(stats, task.quality, task.status, task.progress)
    return render_task(
        task,
        user_group=principal.user_group,
        results=result_urls(task, services, str(request.base_url)),
        estimated_time=estimate,
    )


def result_urls(task: Task, services: Services, request_base: str) -> list[str]:
    """Signed links to the task's files, valid until its results' lifetime ends."""
    if task.status is not Status.COMPLETED or task.finished_at is None:
        return []
    base = (services.settings.public_url or request_base).rstrip("/")
    expires = int(task.finished_at.timestamp()) + services.settings.result_ttl_s
    urls = []
    for key in task.result_keys:
        path = f"/v1/files/{key}"
        signature = services.signer.signature(path, expires)
        urls.append(f"{base}{path}?expires={expires}&signature={signature}")
    return urls


@router.get("/v1/files/{key:path}", response_model=None)
async def get_file(key: str, services: ServicesDep, expires: int = 0, signature: str = "") -> Any:
    """A stored result, reachable only through a signed, unexpired link."""
    path = f"/v1/files/{key}"
    if not services.signer.is_authentic(path, expires, signature):
        raise PermissionDenied("Invalid result link signature")
    if expires < time.time():
        raise TaskNotFound("This result link has expired")
    try:
        file = services.storage.path_for(key)
    except InvalidKey:
        raise TaskNotFound("No such result") from None
    if not file.is_file():
        raise TaskNotFound("No such result")
    return FileResponse(file, media_type="image/png", headers={"Cache-Control": "private"})
