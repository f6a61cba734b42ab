"""One error tree for everything a client can be told, mapped to the contract's body in one place.

    DarkroomError                      500 internal_error / api_error
    ├── InvalidRequest                 400 invalid_request / invalid_request_error (param)
    │   ├── InvalidTaskId              400 invalid_task_id
    │   └── ContentPolicyViolation     400 content_policy_violation (a prompt refused at submit)
    ├── PayloadTooLarge                413 invalid_request
    ├── Unauthorized                   401 unauthorized / authentication_error
    ├── InsufficientQuota              402 insufficient_quota
    ├── ModelAccessDenied              403 model_access_denied
    ├── PermissionDenied               403 permission_denied
    ├── TaskNotFound                   404 task_not_found
    ├── NotFound                       404 not_found (no such endpoint)
    ├── MethodNotAllowed               405 method_not_allowed (allow)
    ├── TaskNotCancellable             409 task_not_cancellable (generating, ended, or its model's are not)
    ├── RateLimited                    429 rate_limit_exceeded (retry_after)
    └── ServiceUnavailable             503 service_unavailable / api_error (retry_after)

Each class's docstring is its default message. `to_body()` is the contract's error body.
"""

from __future__ import annotations

from typing import Any, ClassVar


class DarkroomError(Exception):
    """Internal server error."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    type: ClassVar[str] = "api_error"

    def __init__(self, message: str | None = None, *, param: str | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.param = param
        super().__init__(self.message)

    def to_body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "type": self.type}
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(DarkroomError):
    """The request is invalid."""

    status = 400
    code = "invalid_request"
    type = "invalid_request_error"


class InvalidTaskId(InvalidRequest):
    """Invalid task ID format, must start with 'task-unified-'"""

    code = "invalid_task_id"

    def __init__(self, message: str | None = None, *, param: str | None = "task_id") -> None:
        super().__init__(message, param=param)


class ContentPolicyViolation(InvalidRequest):
    """Prompt refused by the content policy."""

    code = "content_policy_violation"


class PayloadTooLarge(InvalidRequest):
    """The request body is too large."""

    status = 413


class Unauthorized(DarkroomError):
    """Invalid or missing API key."""

    status = 401
    code = "unauthorized"
    type = "authentication_error"


class InsufficientQuota(DarkroomError):
    """Insufficient credits for this request."""

    status = 402
    code = "insufficient_quota"
    type = "insufficient_quota"


class ModelAccessDenied(DarkroomError):
    """Token does not have access to this model."""

    status = 403
    code = "model_access_denied"
    type = "invalid_request_error"


class PermissionDenied(DarkroomError):
    """You do not have permission to access this task."""

    status = 403
    code = "permission_denied"
    type = "invalid_request_error"


class TaskNotFound(DarkroomError):
    """Task not found."""

    status = 404
    code = "task_not_found"
    type = "invalid_request_error"


class NotFound(DarkroomError):
    """No such endpoint."""

    status = 404
    code = "not_found"
    type = "invalid_request_error"


class MethodNotAllowed(DarkroomError):
    """This endpoint does not take that method."""

    status = 405
    code = "method_not_allowed"
    type = "invalid_request_error"

    def __init__(self, message: str | None = None, *, allow: str = "") -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow} if self.allow else {}


class TaskNotCancellable(DarkroomError):
    """This task cannot be cancelled."""

    status = 409
    code = "task_not_cancellable"
    type = "invalid_request_error"


class RateLimited(DarkroomError):
    """Rate limit exceeded, retry later."""

    status = 429
    code = "rate_limit_exceeded"
    type = "rate_limit_error"

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: int = 1,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)
        self.extra_headers = extra_headers or {}

    def headers(self) -> dict[str, str]:
        return {**self.extra_headers, "Retry-After": str(self.retry_after)}


class ServiceUnavailable(DarkroomError):
    """The service is temporarily unavailable."""

    status = 503
    code = "service_unavailable"
    type = "api_error"

    def __init__(self, message: str | None = None, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = None if retry_after is None else max(1, retry_after)

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
