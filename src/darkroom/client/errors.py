"""The errors a client meets, rebuilt from the contract's error body:
`{"error": {"code", "message", "type", "param"?}}`, its HTTP status and its headers.

    DarkroomError
    ├── APIConnectionError        the server could not be reached (after retries)
    ├── TaskFailed                a waited-for task ended `failed` (`code`: its business code)
    └── APIStatusError            an HTTP error answer (`status`, `code`, `param`, `request_id`)
        ├── BadRequest            400
        │   └── ContentPolicyViolation   400 content_policy_violation
        ├── AuthenticationError   401
        ├── InsufficientQuota     402
        ├── PermissionDenied      403
        │   └── ModelAccessDenied 403 model_access_denied
        ├── NotFound              404
        ├── TaskNotCancellable    409 task_not_cancellable
        ├── RateLimited           429 (`retry_after`)
        ├── InternalServerError   500 and other 5xx
        └── ServiceUnavailable    503 (`retry_after`)
"""

from __future__ import annotations

from typing import Any

import httpx


class DarkroomError(Exception):
    """Anything this client raises."""


class APIConnectionError(DarkroomError):
    """The server could not be reached, or the connection broke, after every retry."""


class TaskFailed(DarkroomError):
    """A task ended `failed`; `code` is its business code (`content_policy_violation`, …)."""

    def __init__(self, task: dict[str, Any]) -> None:
        error = task.get("error") or {}
        self.task = task
        self.code: str = error.get("code", "unknown_error")
        self.message: str = error.get("message", "")
        super().__init__(f"task {task.get('id')} failed: {self.code}: {self.message}")


class APIStatusError(DarkroomError):
    """The server answered an error; the fields are its error body's."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        type: str,
        param: str | None,
        request_id: str | None,
        retry_after: float | None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.type = type
        self.param = param
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" (param: {self.param})" if self.param else ""
        return f"{self.status} {self.code}: {self.message}{where}"


class BadRequest(APIStatusError):
    pass


class ContentPolicyViolation(BadRequest):
    pass


class AuthenticationError(APIStatusError):
    pass


class InsufficientQuota(APIStatusError):
    pass


class PermissionDenied(APIStatusError):
    pass


class ModelAccessDenied(PermissionDenied):
    pass


class NotFound(APIStatusError):
    pass


class TaskNotCancellable(APIStatusError):
    pass


class RateLimited(APIStatusError):
    pass


class InternalServerError(APIStatusError):
    pass


class ServiceUnavailable(InternalServerError):
    pass


_BY_CODE: dict[str, type[APIStatusError]] = {
    "content_policy_violation": ContentPolicyViolation,
    "model_access_denied": ModelAccessDenied,
    "task_not_cancellable": TaskNotCancellable,
}
_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequest,
    401: AuthenticationError,
    402: InsufficientQuota,
    403: PermissionDenied,
    404: NotFound,
    413: BadRequest,
    429: RateLimited,
    503: ServiceUnavailable,
}


def retry_after_s(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds (the form darkroom sends), if present and sane."""
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> APIStatusError:
    """The typed error for an error answer, whatever its body (a proxy's HTML page too)."""
    try:
        body = response.json()
        error = body["error"] if isinstance(body, dict) else {}
        error = error if isinstance(error, dict) else {}
    except ValueError:
        error = {}
    status = response.status_code
    code = str(error.get("code") or f"http_{status}")
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status)
    if cls is None:
        cls = InternalServerError if status >= 500 else APIStatusError
    return cls(
        str(error.get("message") or response.reason_phrase or f"HTTP {status}"),
        status=status,
        code=code,
        type=str(error.get("type") or ""),
        param=error.get("param"),
        request_id=response.headers.get("x-request-id"),
        retry_after=retry_after_s(response),
    )
