"""Validating the create request's JSON body against its model (`darkroom.wire`), with the
contract's messages, into the order to submit."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from darkroom.contract import Quality
from darkroom.errors import InvalidRequest
from darkroom.service.submit import GenerationOrder
from darkroom.wire import OPENAI_ROUTE, GenerationRequest

_ELSEWHERE = f"; the OpenAI-compatible route {OPENAI_ROUTE} takes it"
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


_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "a boolean",
    "model_type": "a JSON object",
}


def parse_generation_request(payload: Any) -> GenerationOrder:
    """Validate a decoded JSON body into the order to submit; the first problem becomes a 400
    naming its field."""
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    refuse_foreign_fields(payload)
    try:
        request = GenerationRequest.model_validate(payload)
    except ValidationError as exc:
        raise to_invalid_request(exc) from None
    # The contract's defaults applied.
    return GenerationOrder(
        model=request.model,
        prompt=request.prompt,
        size=request.size or "1:1",
        quality=Quality(request.quality or Quality.K1.value),
        seed=request.seed or None,
        nsfw_check=bool(request.nsfw_check),
        callback_url=request.callback_url,
    )


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
