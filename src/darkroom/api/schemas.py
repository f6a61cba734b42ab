"""Request validation and response rendering for the contract's JSON bodies."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from darkroom.billing.money import to_credits
from darkroom.contract import SEED_MAX, SIZES, TASK_OBJECT, TASK_TYPE, Quality, Status
from darkroom.errors import InvalidRequest
from darkroom.tasks.model import Task


class GenerationRequest(BaseModel):
    """`POST /v1/images/generations`: strict types, unknown fields ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    model: str
    prompt: str
    size: str | None = None
    quality: str | None = None
    seed: int | None = None
    nsfw_check: bool | None = None
    callback_url: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be empty")
        return value

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None and value not in SIZES:
            raise ValueError(f"size must be one of {', '.join(SIZES)}")
        return value

    @field_validator("quality")
    @classmethod
    def _quality(cls, value: str | None) -> str | None:
        if value is not None and value not in {q.value for q in Quality}:
            raise ValueError("quality must be one of 1K, 2K")
        return value

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value <= SEED_MAX:
            raise ValueError(f"seed must be between 0 and {SEED_MAX}")
        return value

    @property
    def size_or_default(self) -> str:
        return self.size or "1:1"

    @property
    def quality_or_default(self) -> Quality:
        return Quality(self.quality or Quality.K1.value)


_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "a boolean",
    "model_type": "a JSON object",
}


def parse_generation_request(payload: Any) -> GenerationRequest:
    """Validate a decoded JSON body; the first problem becomes a 400 naming its field."""
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        return GenerationRequest.model_validate(payload)
    except ValidationError as exc:
        raise _to_invalid_request(exc) from None


def _to_invalid_request(exc: ValidationError) -> InvalidRequest:
    error = exc.errors(include_url=False)[0]
    param = ".".join(str(part) for part in error["loc"]) or None
    kind = error["type"]
    if kind == "missing":
        message = f"{param} is required"
    elif kind in _TYPE_NAMES:
        message = f"{param} must be {_TYPE_NAMES[kind]}"
    elif kind == "value_error":
        message = str(error["ctx"]["error"])
    else:
        message = f"{param}: {error['msg']}"
    return InvalidRequest(message, param=param)


def render_task(
    task: Task, *, user_group: str, results: list[str], estimated_time: int | None
) -> dict[str, Any]:
    """The task as `GET /v1/tasks/{id}` returns it (and the callback body will carry)."""
    task_info: dict[str, Any] = {"can_cancel": False}
    if not task.status.is_terminal() and estimated_time is not None:
        task_info["estimated_time"] = estimated_time
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
        body["result_data"] = [{"url": url} for url in results]
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
