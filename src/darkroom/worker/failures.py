"""What a task that failed in the engine is told: a business code and a client-safe message."""

from __future__ import annotations

from darkroom.contract import FailureCode
from darkroom.engine.base import EngineRefused, PromptTooLong


def failure_for(exc: BaseException) -> tuple[FailureCode, str]:
    """The business code and client-safe message for an engine exception."""
    if isinstance(exc, PromptTooLong):
        return FailureCode.INVALID_PARAMETERS, "Prompt is too long"
    if isinstance(exc, EngineRefused):  # a remote engine's 4xx, in its words
        return exc.code, exc.message
    if type(exc).__name__ == "OutOfMemoryError":
        return FailureCode.RESOURCE_EXHAUSTED, "The GPU ran out of memory; retry later"
    return FailureCode.SERVICE_ERROR, "Image generation failed; retry later"
