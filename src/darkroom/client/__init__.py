"""A Python client for darkroom's API, and for the hosted krea-2-turbo API it speaks.

    from darkroom.client import Client

    with Client(base_url="http://127.0.0.1:8000", api_key="dk-...") as client:
        task = client.images.generate("a lighthouse at dusk", size="16:9", quality="1K")
        task = client.tasks.wait(task.id, on_progress=lambda t: print(t.progress))
        client.tasks.download(task, "lighthouse.png")

Needs only httpx (no torch): `pip install darkroom` without the engine extra.
"""

from darkroom.client._async import AsyncClient
from darkroom.client._base import InvalidSignature, Task, TaskPage, verify_callback
from darkroom.client._sync import Client
from darkroom.client.errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BadRequest,
    ContentPolicyViolation,
    DarkroomError,
    InsufficientQuota,
    InternalServerError,
    ModelAccessDenied,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    TaskFailed,
    TaskNotCancellable,
)

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequest",
    "Client",
    "ContentPolicyViolation",
    "DarkroomError",
    "InsufficientQuota",
    "InternalServerError",
    "InvalidSignature",
    "ModelAccessDenied",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "ServiceUnavailable",
    "Task",
    "TaskFailed",
    "TaskNotCancellable",
    "TaskPage",
    "verify_callback",
]
