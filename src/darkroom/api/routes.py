"""The contract's endpoints: create a generation task, query a task, fetch a result file."""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from darkroom.api.body import read_json
from darkroom.api.deps import PrincipalDep, ServicesDep
from darkroom.api.links import result_urls
from darkroom.api.schemas import parse_generation_request, render_task
from darkroom.api.services import Services
from darkroom.billing.money import to_credits, to_micro
from darkroom.callbacks.policy import check_at_submit
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
    TaskNotFound,
)
from darkroom.storage.local import InvalidKey, LocalStorage
from darkroom.tasks.estimate import estimate_s, run_time_s
from darkroom.tasks.model import IdempotencyKey, NewTask, Task
from darkroom.tasks.store import IdempotencyRace, utcnow

router = APIRouter()


@router.post("/v1/images/generations")
async def create_generation(
    request: Request, response: Response, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    settings = services.settings
    rate = await services.rate_limiter.hit(principal.key_id, principal.limits.rate_limit, "create")
    response.headers.update(rate.headers())
    raw = await read_json(request, settings.max_body_bytes, settings.body_timeout_s)
    body = parse_generation_request(raw)
    idempotency = idempotency_key(request, raw)
    if idempotency is not None:
        replayed = await services.tasks.replay(principal.key_id, idempotency)
        if replayed is not None:  # the same task, as it stands now
            return await render_now(replayed, principal.user_group, services, str(request.base_url))
    if body.model not in settings.models:
        raise InvalidRequest(f"Unknown model: {body.model}", param="model")
    if not principal.limits.allows(body.model):
        raise ModelAccessDenied(f"Token does not have access to model: {body.model}")
    services.prompt_screen.check(body.prompt, strict=bool(body.nsfw_check))
    if body.nsfw_check and not services.strict_check_available:
        raise InvalidRequest(
            "nsfw_check is not available on this server: its image checker is not installed",
            param="nsfw_check",
        )
    counter = services.token_counters.get(body.model)
    if counter is not None:
        tokens = counter.count(body.prompt)
        if tokens > PROMPT_TOKEN_LIMIT:
            raise InvalidRequest(
                f"Prompt is too long: {tokens} tokens; the limit is {PROMPT_TOKEN_LIMIT}",
                param="prompt",
            )
    if body.callback_url is not None:
        await check_at_submit(
            body.callback_url,
            services.resolver,
            allow_private=settings.callback_allow_private,
        )
    size, quality = body.size_or_default, body.quality_or_default
    width, height = pixel_size(size, quality)
    stats = await services.tasks.queue_stats(body.model, quality)
    estimate = estimate_s(stats, quality, Status.PENDING, 0)
    now = utcnow()
    new = NewTask(
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
        link_base=str(request.base_url),
        price_micro=to_micro(settings.prices[body.model][quality.value]),
        estimated_time=estimate,
        created_at=now,
    )
    try:
        task = await services.tasks.create(
            new,
            max_unfinished=principal.limits.max_concurrent or settings.default_max_concurrent,
            retry_after_s=math.ceil(run_time_s(stats, quality)),
            idempotency=idempotency,
        )
    except IdempotencyRace:
        assert idempotency is not None
        replayed = await services.tasks.replay(principal.key_id, idempotency)
        assert replayed is not None
        return await render_now(replayed, principal.user_group, services, str(request.base_url))
    return render_task(task, user_group=principal.user_group, results=[], estimated_time=estimate)


def idempotency_key(request: Request, raw: dict[str, Any]) -> IdempotencyKey | None:
    """The request's Idempotency-Key, bound to a hash of its body (key order and spacing aside)."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not key or len(key) > 255 or not key.isprintable():
        raise InvalidRequest(
            "Idempotency-Key must be 1 to 255 printable characters", param="Idempotency-Key"
        )
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return IdempotencyKey(key, hashlib.sha256(canonical.encode()).hexdigest())


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
    return await render_now(task, principal.user_group, services, str(request.base_url))


async def render_now(task: Task, user_group: str, services: Services, base: str) -> dict[str, Any]:
    """The task as it stands: links if completed, a fresh estimate if not finished."""
    estimate = None
    if not task.status.is_terminal():
        stats = await services.tasks.queue_stats(task.model, task.quality, before=task.created_at)
        estimate = estimate_s(stats, task.quality, task.status, task.progress)
    return render_task(
        task,
        user_group=user_group,
        results=result_urls(task, services, base),
        estimated_time=estimate,
    )


@router.get("/v1/credits")
async def get_credits(
    response: Response, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """The calling key's own limit and use, and its account's balance and use."""
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


@router.get("/v1/files/{key:path}", response_model=None)
async def get_file(key: str, services: ServicesDep, expires: int = 0, signature: str = "") -> Any:
    """A stored result, reachable only through a signed, unexpired link."""
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
