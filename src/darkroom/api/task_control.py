"""darkroom's extensions on tasks, beside the contract's routes (whose bodies they leave as they
are): cancel a pending task, list the calling key's tasks."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from darkroom.api.deps import caller, services_of
from darkroom.api.openapi import error_responses, task_responses
from darkroom.api.routes import query_own_task, render_now
from darkroom.contract import Status
from darkroom.service.cancel import cancel_task
from darkroom.tasks.history import TaskHistory
from darkroom.wire import TaskBody

router = APIRouter(tags=["darkroom extensions"])

DEFAULT_PAGE, MAX_PAGE = 20, 100


@router.post(
    "/v1/tasks/{task_id}/cancel",
    summary="Cancel a pending task (darkroom extension)",
    description="A pending task ends `failed` with `error.code` `request_cancelled`, its "
    "credits released and its callback sent. 409 `task_not_cancellable` when it is already "
    "generating or has ended, or when its model's tasks cannot be cancelled on this server "
    "(`task_info.can_cancel` says beforehand; krea-2-turbo's cannot unless the operator allows "
    "it). Cancelling a task already cancelled answers it again.",
    response_model=None,
    responses=task_responses(400, 401, 403, 404, 409, 429, 500),
)
async def cancel(task_id: str, request: Request) -> JSONResponse:
    services = services_of(request)
    principal = await caller(request, services)
    task, rate = await query_own_task(task_id, principal, services)
    ended = await cancel_task(task, services.tasks, services.settings)
    body = await render_now(ended, principal.user_group, services, str(request.base_url))
    return JSONResponse(body, headers=rate.headers())


class TaskList(BaseModel):
    object: str = Field("list", examples=["list"])
    data: list[TaskBody] = Field(description="Newest first, each as GET /v1/tasks/{id} shows it")
    has_more: bool
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: last")


@router.get(
    "/v1/tasks",
    summary="The calling key's tasks (darkroom extension)",
    description=f"Newest first, {DEFAULT_PAGE} a page (`limit` up to {MAX_PAGE}); `status` "
    "keeps one status; `cursor` is the `next_cursor` of the page before. Only the calling key's "
    "own tasks, and only those within their retention.",
    response_model=None,
    responses=error_responses(
        400, 401, 429, 500, ok={"model": TaskList, "description": "A page of tasks"}
    ),
)
async def list_tasks(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    status: Annotated[Status | None, Query(description="Only tasks in this state")] = None,
    cursor: Annotated[str | None, Query(description="The `next_cursor` of the page before")] = None,
) -> JSONResponse:
    services = services_of(request)
    principal = await caller(request, services)
    rate = await services.rate_limiter.hit(
        principal.key_id, services.settings.query_rate_limit, "query"
    )
    page = await TaskHistory(services.db).page(
        principal.key_id, limit=limit, status=status, cursor=cursor
    )
    base = str(request.base_url)
    data = [await render_now(task, principal.user_group, services, base) for task in page.tasks]
    body: dict[str, Any] = {
        "object": "list",
        "data": data,
        "has_more": page.next_cursor is not None,
        "next_cursor": page.next_cursor,
    }
    return JSONResponse(body, headers=rate.headers())
