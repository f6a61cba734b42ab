"""Validating the create request's JSON body (the task's body is rendered by darkroom.tasks.render)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from darkroom.contract import SEED_MAX, SIZES, Quality
from darkroom.errors import InvalidRequest
from darkroom.service.submit import GenerationOrder


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

    def order(self) -> GenerationOrder:
        """The order to submit, the contract's defaults applied."""
        return GenerationOrder(
            model=self.model,
            prompt=self.prompt,
            size=self.size or "1:1",
            quality=Quality(self.quality or Quality.K1.value),
            seed=self.seed or None,
            nsfw_check=bool(self.nsfw_check),
            callback_url=self.callback_url,
        )


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
