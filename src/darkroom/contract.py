"""The wire contract's fixed vocabulary: sizes, qualities, statuses, error codes, task ids."""

from __future__ import annotations

import re
import secrets
import string
from enum import StrEnum

MODEL_KREA_2_TURBO = "krea-2-turbo"
TASK_OBJECT = "image.generation.task"
TASK_TYPE = "image"
TASK_ID_PREFIX = "task-unified-"
SEED_MAX = 1_048_576
PROMPT_TOKEN_LIMIT = 640
CALLBACK_URL_MAX = 2048


class Quality(StrEnum):
    K1 = "1K"
    K2 = "2K"


class Status(StrEnum):
    """A task's state, on the wire and in the table."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"

    def is_terminal(self) -> bool:
        return self in (Status.COMPLETED, Status.FAILED)


class FailureCode(StrEnum):
    """Business codes a failed task carries in `error.code`."""

    CONTENT_POLICY_VIOLATION = "content_policy_violation"
    INVALID_PARAMETERS = "invalid_parameters"
    REQUEST_CANCELLED = "request_cancelled"
    GENERATION_FAILED_NO_CONTENT = "generation_failed_no_content"
    SERVICE_ERROR = "service_error"
    GENERATION_TIMEOUT = "generation_timeout"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    QUOTA_EXCEEDED = "quota_exceeded"
    SERVICE_UNAVAILABLE = "service_unavailable"
    RESOURCE_NOT_FOUND = "resource_not_found"
    UNKNOWN_ERROR = "unknown_error"

    def is_client_side(self) -> bool:
        return self in _CLIENT_SIDE


_CLIENT_SIDE = frozenset(
    {
        FailureCode.CONTENT_POLICY_VIOLATION,
        FailureCode.INVALID_PARAMETERS,
        FailureCode.REQUEST_CANCELLED,
    }
)

# Output pixels (width, height) exactly as published. 5:4 and 4:3 share 1152x896 at 1K.
SIZES: dict[str, dict[Quality, tuple[int, int]]] = {
    "1:1": {Quality.K1: (1024, 1024), Quality.K2: (2048, 2048)},
    "4:3": {Quality.K1: (1152, 896), Quality.K2: (2304, 1728)},
    "3:4": {Quality.K1: (896, 1152), Quality.K2: (1728, 2304)},
    "5:4": {Quality.K1: (1152, 896), Quality.K2: (2240, 1792)},
    "4:5": {Quality.K1: (896, 1152), Quality.K2: (1792, 2240)},
    "2:3": {Quality.K1: (832, 1280), Quality.K2: (1664, 2496)},
    "3:2": {Quality.K1: (1280, 832), Quality.K2: (2496, 1664)},
    "9:16": {Quality.K1: (768, 1344), Quality.K2: (1472, 2688)},
    "16:9": {Quality.K1: (1344, 768), Quality.K2: (2688, 1472)},
    "1:2": {Quality.K1: (704, 1472), Quality.K2: (1408, 2816)},
    "2:1": {Quality.K1: (1472, 704), Quality.K2: (2816, 1408)},
}


def pixel_size(size: str, quality: Quality) -> tuple[int, int]:
    """The (width, height) the contract publishes for a size and quality."""
    return SIZES[size][quality]


_ID_ALPHABET = string.ascii_lowercase + string.digits
_TASK_ID_RE = re.compile(r"^task-unified-\d{1,12}-[a-z0-9]{8}$")


def new_task_id(created: int) -> str:
    """`task-unified-<unix seconds>-<8 chars of [a-z0-9]>`."""
    suffix = "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))
    return f"{TASK_ID_PREFIX}{created}-{suffix}"


def is_task_id(value: str) -> bool:
    return _TASK_ID_RE.fullmatch(value) is not None
