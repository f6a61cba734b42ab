"""The wire, declared once: the create's body as it is validated, the task's body as it is
rendered (a poll, an event, a callback), the error and credits bodies. The OpenAPI document is
built from these same models, and tests check the SDK and the playground against it. A leaf:
pydantic and the contract's names, nothing else of darkroom."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from darkroom.contract import (
    CALLBACK_URL_MAX,
    SEED_MAX,
    SIZES,
    FailureCode,
    Quality,
    Status,
)

OPENAI_ROUTE = "/openai/v1/images/generations"


def _on_value(**keywords: Any) -> Callable[[dict[str, Any]], None]:
    """JSON Schema keywords for a field's value: on the field, or on the non-null branch of an
    optional one (`anyOf: [{type: integer, maximum: ...}, {type: null}]`)."""

    def add(schema: dict[str, Any]) -> None:
        branches = [b for b in schema.get("anyOf", []) if b.get("type") != "null"]
        (branches[0] if branches else schema).update(keywords)

    return add


_PIXEL_SIZE = re.compile(r"^\s*\d+\s*[xX\u00d7]\s*\d+\s*$")


class GenerationRequest(BaseModel):
    """`POST /v1/images/generations`. Unknown fields are ignored (but fields of other image
    APIs that would change the picture are refused); a field of the wrong JSON type is a 400
    (no coercion: `"seed": "7"` is refused)."""

    # The validators below give the contract's messages; `json_schema_extra` says the same
    # bounds in the document (pydantic's own constraints would word the refusals otherwise).
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    model: str = Field(description="A model this server serves", examples=["krea-2-turbo"])
    prompt: str = Field(
        description="At most 640 tokens of the model's own tokenizer; not only whitespace. "
        "Refused by the content policy: 400 `content_policy_violation`.",
        examples=["a red fox in fresh snow, morning light"],
        json_schema_extra=_on_value(minLength=1, pattern=r"\S"),
    )
    size: str | None = Field(
        default=None,
        description="Aspect ratio; the pixels follow from it and `quality`. Absent or null: 1:1",
        json_schema_extra=_on_value(enum=list(SIZES)),
    )
    quality: str | None = Field(
        default=None,
        description="Absent or null: 1K",
        json_schema_extra=_on_value(enum=[q.value for q in Quality]),
    )
    seed: int | None = Field(
        default=None,
        description="0, null or absent: the server draws one (the task's `seed` tells which)",
        json_schema_extra=_on_value(minimum=0, maximum=SEED_MAX),
    )
    nsfw_check: bool | None = Field(
        default=None, description="Stricter moderation: the prompt and the image are checked"
    )
    callback_url: str | None = Field(
        default=None,
        description="HTTPS, never an internal address; the task's body is POSTed here, signed",
        examples=["https://example.com/hooks/darkroom"],
        json_schema_extra=_on_value(maxLength=CALLBACK_URL_MAX),
    )

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be empty")
        return value

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None and _PIXEL_SIZE.match(value):
            raise ValueError(
                f"size takes an aspect ratio here, one of {', '.join(SIZES)}, with quality 1K or"
                f" 2K; a pixel size such as 1344x768 is taken by the OpenAI-compatible route"
                f" {OPENAI_ROUTE}"
            )
        if value is not None and value not in SIZES:
            raise ValueError(f"size must be one of {', '.join(SIZES)}")
        return value

    @field_validator("quality")
    @classmethod
    def _quality(cls, value: str | None) -> str | None:
        if value is not None and value not in {q.value for q in Quality}:
            raise ValueError("quality must be one of 1K, 2K")
        return value

    @field_validator("seed", mode="before")
    @classmethod
    def _integral_seed(cls, value: object) -> object:
        """JSON has one number type: `7.0` is the integer 7 (as JSON Schema says), `7.5` no."""
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value <= SEED_MAX:
            raise ValueError(f"seed must be between 0 and {SEED_MAX}")
        return value


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_request"])
    message: str = Field(examples=["size must be one of 1:1, 4:3, ..."])
    type: str = Field(examples=["invalid_request_error"])
    param: str | None = Field(default=None, examples=["size"])


class ErrorBody(BaseModel):
    """Every HTTP error, whatever its status."""

    error: ErrorDetail


class TaskInfo(BaseModel):
    can_cancel: bool = Field(
        default=False,
        description="Whether POST /v1/tasks/{task_id}/cancel would cancel it: pending, and of a "
        "model the server lets callers cancel (krea-2-turbo: not, as the hosted API says)",
    )
    estimated_time: int | None = Field(
        default=None, ge=0, description="Seconds until the result; absent once finished"
    )
    queue_position: int | None = Field(
        default=None,
        ge=1,
        description="A darkroom extra, while pending: 1 means next. An upper bound: accounts "
        "take turns, so it may fall faster than the tasks ahead finish",
    )


class Usage(BaseModel):
    billing_rule: str = Field(examples=["per_call"])
    credits_reserved: float = Field(ge=0, examples=[0.45])
    user_group: str = Field(examples=["default"])
    credits_used: float | None = Field(default=None, ge=0, description="Completed tasks only")


class ResultData(BaseModel):
    url: str
    image_url: str = Field(description="The same link, under the name the hosted MCP server reads")


class TaskError(BaseModel):
    code: Literal[tuple(c.value for c in FailureCode)]  # type: ignore[valid-type]
    message: str
    type: Literal["task_error"]


class TaskBody(BaseModel):
    """A task, as a create, a poll, an event and a callback carry it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "created": 1751280000,
                    "id": "task-unified-1751280000-k2t9x8a3",
                    "model": "krea-2-turbo",
                    "object": "image.generation.task",
                    "progress": 0,
                    "seed": 421337,
                    "status": "pending",
                    "task_info": {"can_cancel": False, "estimated_time": 45},
                    "type": "image",
                    "usage": {
                        "billing_rule": "per_call",
                        "credits_reserved": 0.45,
                        "user_group": "default",
                    },
                }
            ]
        }
    )

    created: int = Field(description="Unix seconds")
    id: str = Field(pattern=r"^task-unified-\d{1,12}-[a-z0-9]{8}$")
    model: str
    object: Literal["image.generation.task"]
    progress: int = Field(ge=0, le=100)
    seed: int = Field(ge=0, le=SEED_MAX, description="The seed used (a darkroom extra)")
    status: Literal[tuple(s.value for s in Status)]  # type: ignore[valid-type]
    task_info: TaskInfo
    type: Literal["image"]
    usage: Usage
    results: list[str] | None = Field(
        default=None, description="Completed: links to the images, valid 24 hours"
    )
    result_data: list[ResultData] | None = Field(default=None, description="Completed")
    duration: int | None = Field(default=None, ge=0, description="Completed: seconds generating")
    error: TaskError | None = Field(default=None, description="Failed only")
    idempotency_replayed: bool | None = Field(
        default=None, description="A create answered from an earlier one with its Idempotency-Key"
    )


class Balance(BaseModel):
    remaining_credits: float
    used_credits: float


class KeyBalance(Balance):
    unlimited_credits: bool


class CreditsData(BaseModel):
    token: KeyBalance
    user: Balance


class CreditsBody(BaseModel):
    success: bool
    message: str
    data: CreditsData
