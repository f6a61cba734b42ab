"""Validating the create request's JSON body (the task's body is rendered by darkroom.tasks.render)."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from darkroom.contract import SEED_MAX, SIZES, Quality
from darkroom.errors import InvalidRequest
from darkroom.service.submit import GenerationOrder

OPENAI_ROUTE = "/openai/v1/images/generations"
_ELSEWHERE = f"; the OpenAI-compatible route {OPENAI_ROUTE} takes it"
_PIXEL_SIZE = re.compile(r"^\s*\d+\s*[xX\u00d7]\s*\d+\s*$")
_SIZE_INSTEAD = "set the picture's shape with size (an aspect ratio) and quality (1K or 2K)"

# Fields of other image APIs that would change what the caller gets if honoured. The contract
# has none of them, so they are refused, never ignored: ignoring one charges for a picture other
# than the one asked for. Each maps to why.
FOREIGN_FIELDS: dict[str, str] = {
    "negative_prompt": "this model takes no negative prompt",
    "image_urls": "this model is text-to-image only",
    "image_url": "this model is text-to-image only",
    "image": "this model is text-to-image only",
    "mask_url": "this model is text-to-image only",
    "width": _SIZE_INSTEAD,
    "height": _SIZE_INSTEAD,
    "num_inference_steps": "the number of steps is fixed by the model",
    "steps": "the number of steps is fixed by the model",
    "guidance_scale": "guidance is fixed by the model",
    "guidance": "guidance is fixed by the model",
    "true_cfg_scale": "guidance is fixed by the model",
    "style": "this model has no styles",
}
# Fields of other image APIs accepted at the one value that changes nothing here, and why
# another value is refused.
NEUTRAL_FIELDS: dict[str, tuple[object, str]] = {
    "n": (1, f"a task makes one image{_ELSEWHERE}"),
    "response_format": ("url", f"a task's results are links{_ELSEWHERE}"),
    "output_format": ("png", "results are PNG files"),
}


def refuse_foreign_fields(payload: dict[str, Any]) -> None:
    """InvalidRequest naming the first field the contract lacks whose value would change the
    result (`n` above 1, `negative_prompt`, ...); `n: 1` and the like pass."""
    for field, why in FOREIGN_FIELDS.items():
        if payload.get(field) is not None:
            raise InvalidRequest(f"{field} is not supported: {why}", param=field)
    for field, (neutral, why) in NEUTRAL_FIELDS.items():
        value = payload.get(field)
        # `type` too: `true == 1` in Python, not on the wire
        if value is not None and (value != neutral or type(value) is not type(neutral)):
            raise InvalidRequest(f"{field} must be {json.dumps(neutral)}: {why}", param=field)


class GenerationRequest(BaseModel):
    """`POST /v1/images/generations`: strict types; unknown fields ignored, but those of
    `FOREIGN_FIELDS` (and `NEUTRAL_FIELDS` at another value) refused."""

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
    refuse_foreign_fields(payload)
    try:
        return GenerationRequest.model_validate(payload)
    except ValidationError as exc:
        raise to_invalid_request(exc) from None


def to_invalid_request(exc: ValidationError) -> InvalidRequest:
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
