"""The task as the contract shows it, in a poll's answer and its callback alike: the body, and
the links to its result files. Below the API, so the callback sender renders without it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from darkroom.billing.money import to_credits
from darkroom.contract import TASK_OBJECT, TASK_TYPE, FailureCode, Status
from darkroom.storage.base import ResultStorage
from darkroom.storage.signing import LinkSigner
from darkroom.tasks.model import Task
from darkroom.wire import ResultData, TaskBody, TaskError, TaskInfo, Usage


@dataclass(frozen=True, slots=True)
class ResultLinks:
    """Makes a completed task's result links: the API's own signed ones, or the bucket's."""

    storage: ResultStorage
    signer: LinkSigner
    ttl_s: int
    public_url: str | None = None

    def for_task(self, task: Task, request_base: str) -> list[str]:
        """Links to the task's files, valid until its results' lifetime ends; `request_base`
        is the URL the request came through, unless a public URL is configured."""
        if task.status is not Status.COMPLETED or task.finished_at is None:
            return []
        base = (self.public_url or request_base).rstrip("/")
        expires = int(task.finished_at.timestamp()) + self.ttl_s
        urls = []
        for key in task.result_keys:
            direct = self.storage.direct_link(key, expires)  # a bucket's presigned link
            if direct is not None:
                urls.append(direct)
                continue
            path = f"/v1/files/{key}"
            signature = self.signer.signature(path, expires)
            urls.append(f"{base}{path}?expires={expires}&signature={signature}")
        return urls


def render_task(
    task: Task,
    *,
    user_group: str,
    results: list[str],
    estimated_time: int | None,
    queue_position: int | None = None,
    can_cancel: bool = False,
) -> dict[str, Any]:
    """The task as `GET /v1/tasks/{id}` returns it (and the callback body will carry): a
    `TaskBody`, the model the OpenAPI document shows, as JSON-ready data without its unset
    fields. `queue_position` (a darkroom extra) is shown while it is pending."""
    terminal = task.status.is_terminal()
    completed = task.status is Status.COMPLETED
    duration = error = None
    if completed and task.started_at and task.finished_at:
        duration = math.ceil((task.finished_at - task.started_at).total_seconds())
    if task.status is Status.FAILED:
        error = TaskError(
            code=task.error_code.value if task.error_code else FailureCode.UNKNOWN_ERROR.value,
            message=task.error_message or "",
            type="task_error",
        )
    body = TaskBody(
        created=int(task.created_at.timestamp()),
        id=task.id,
        model=task.model,
        object=TASK_OBJECT,
        progress=task.progress,
        # Not in the hosted contract: the seed actually used, so a result can be reproduced.
        seed=task.seed,
        status=task.status.value,
        task_info=TaskInfo(
            can_cancel=can_cancel,
            estimated_time=None if terminal else estimated_time,
            queue_position=queue_position if task.status is Status.PENDING else None,
        ),
        type=TASK_TYPE,
        usage=Usage(
            billing_rule="per_call",
            credits_reserved=task.credits_reserved,
            user_group=user_group,
            credits_used=to_credits(task.charged_micro or 0) if completed else None,
        ),
        results=results if completed else None,
        # `image_url` too: the hosted service's MCP server reads that name, other clients `url`.
        result_data=[ResultData(url=u, image_url=u) for u in results] if completed else None,
        duration=duration,
        error=error,
    )
    return body.model_dump(mode="json", exclude_none=True)
