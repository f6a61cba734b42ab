"""The task as the contract shows it, in a poll's answer and its callback alike: the body, and
the links to its result files. Below the API, so the callback sender renders without it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from darkroom.billing.money import to_credits
from darkroom.contract import TASK_OBJECT, TASK_TYPE, Status
from darkroom.storage.base import ResultStorage
from darkroom.storage.signing import LinkSigner
from darkroom.tasks.model import Task


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
    """The task as `GET /v1/tasks/{id}` returns it (and the callback body will carry).
    `queue_position` (a darkroom extra) is shown while it is pending."""
    task_info: dict[str, Any] = {"can_cancel": can_cancel}
    if not task.status.is_terminal() and estimated_time is not None:
        task_info["estimated_time"] = estimated_time
    if task.status is Status.PENDING and queue_position is not None:
        task_info["queue_position"] = queue_position
    usage: dict[str, Any] = {
        "billing_rule": "per_call",
        "credits_reserved": task.credits_reserved,
        "user_group": user_group,
    }
    body: dict[str, Any] = {
        "created": int(task.created_at.timestamp()),
        "id": task.id,
        "model": task.model,
        "object": TASK_OBJECT,
        "progress": task.progress,
        # Not in the hosted contract: the seed actually used, so a result can be reproduced.
        "seed": task.seed,
        "status": task.status.value,
        "task_info": task_info,
        "type": TASK_TYPE,
        "usage": usage,
    }
    if task.status is Status.COMPLETED:
        body["results"] = results
        # `image_url` too: the hosted service's MCP server reads that name, other clients `url`.
        body["result_data"] = [{"url": url, "image_url": url} for url in results]
        usage["credits_used"] = to_credits(task.charged_micro or 0)
        if task.started_at and task.finished_at:
            body["duration"] = math.ceil((task.finished_at - task.started_at).total_seconds())
    elif task.status is Status.FAILED:
        body["error"] = {
            "code": task.error_code.value if task.error_code else "unknown_error",
            "message": task.error_message or "",
            "type": "task_error",
        }
    return body
