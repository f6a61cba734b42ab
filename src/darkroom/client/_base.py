"""What the sync and async clients share: configuration, the task type, the retry rule, the
create body and the signed-callback check. No I/O here."""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks import Webhook, WebhookVerificationError

from darkroom import __version__
from darkroom.client.errors import (
    APIStatusError,
    DarkroomError,
    NotFound,
    error_from_response,
    retry_after_s,
)

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_MODEL = "krea-2-turbo"
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_WAIT_S = 60.0


@dataclass(frozen=True, slots=True)
class Task:
    """A task as the server last showed it; `raw` is its whole body."""

    id: str
    status: str
    progress: int
    model: str
    created: int
    seed: int | None
    results: tuple[str, ...]
    estimated_time: int | None
    error: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False, compare=False)
    queue_position: int | None = None  # a darkroom extra, while pending: 1 is next
    can_cancel: bool = False

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Task:
        return cls(
            id=body["id"],
            status=body["status"],
            progress=int(body.get("progress") or 0),
            model=body.get("model", ""),
            created=int(body.get("created") or 0),
            seed=body.get("seed"),
            results=tuple(body.get("results") or ()),
            estimated_time=(body.get("task_info") or {}).get("estimated_time"),
            error=body.get("error"),
            raw=body,
            queue_position=(body.get("task_info") or {}).get("queue_position"),
            can_cancel=bool((body.get("task_info") or {}).get("can_cancel")),
        )

    @property
    def done(self) -> bool:
        return self.status in ("completed", "failed")


ProgressCallback = Callable[[Task], object]


@dataclass(frozen=True, slots=True)
class TaskPage:
    """One page of `GET /v1/tasks`: the key's tasks, newest first; `next_cursor` None on the
    last page."""

    tasks: tuple[Task, ...]
    next_cursor: str | None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> TaskPage:
        return cls(tuple(Task.from_body(t) for t in body["data"]), body.get("next_cursor"))


def list_params(status: str | None, limit: int | None, cursor: str | None) -> dict[str, str]:
    given = {"status": status, "limit": limit, "cursor": cursor}
    return {name: str(value) for name, value in given.items() if value is not None}


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Where and how to call: from the arguments, else `DARKROOM_URL` / `DARKROOM_API_KEY`."""

    base_url: str
    api_key: str
    timeout_s: float
    max_retries: int
    retry_rate_limited: bool = True

    @classmethod
    def resolve(
        cls,
        api_key: str | None,
        base_url: str | None,
        timeout_s: float,
        max_retries: int,
        retry_rate_limited: bool = True,
    ) -> ClientConfig:
        key = api_key or os.environ.get("DARKROOM_API_KEY")
        if not key:
            raise DarkroomError("No API key: pass api_key= or set DARKROOM_API_KEY")
        url = base_url or os.environ.get("DARKROOM_URL") or DEFAULT_URL
        return cls(url.rstrip("/"), key, timeout_s, max(0, max_retries), retry_rate_limited)

    def should_retry(self, attempt: int, response: httpx.Response | None) -> bool:
        """A broken connection (`response` None) or a 429/5xx, while retries are left."""
        if attempt >= self.max_retries:
            return False
        if response is None:
            return True
        if response.status_code == 429:
            return self.retry_rate_limited
        return response.status_code in RETRYABLE_STATUSES

    def client_kwargs(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "headers": {
                "Authorization": f"Bearer {self.api_key}",
                "User-Agent": f"darkroom-python/{__version__}",
            },
            "timeout": httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s)),
        }


def retry_delay_s(attempt: int, response: httpx.Response | None) -> float:
    """How long to wait before retry number `attempt + 1`: the server's `Retry-After` where it
    gave one, else exponential backoff with jitter (0.5 s, 1 s, 2 s, … up to a minute)."""
    if response is not None:
        after = retry_after_s(response)
        if after is not None:
            return min(after, MAX_RETRY_WAIT_S)
    return min(0.5 * 2.0**attempt, MAX_RETRY_WAIT_S) * random.uniform(0.8, 1.2)


def checked(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        raise error_from_response(response)
    return response


def generation_body(
    prompt: str,
    *,
    model: str,
    size: str | None,
    quality: str | None,
    seed: int | None,
    nsfw_check: bool | None,
    callback_url: str | None,
) -> dict[str, Any]:
    """The create's JSON: only what was given, so the server's defaults apply to the rest."""
    body: dict[str, Any] = {"model": model, "prompt": prompt}
    optional = {
        "size": size,
        "quality": quality,
        "seed": seed,
        "nsfw_check": nsfw_check,
        "callback_url": callback_url,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


def result_path(task: Task, path: str | Path | None) -> Path:
    """Where a download goes: `path`, or `<task id>.png` in the folder `path` (default: here)."""
    target = Path(path) if path is not None else Path.cwd()
    if target.is_dir():
        target = target / f"{task.id}.png"
    return target


def new_idempotency_key() -> str:
    return f"darkroom-python-{uuid.uuid4()}"


def has_no_events(error: APIStatusError) -> bool:
    """The server has no events stream (the hosted service, an older darkroom): poll instead."""
    return (isinstance(error, NotFound) and error.code != "task_not_found") or error.status == 405


def poll_interval_s(task: Task) -> float:
    """Poll again in a fraction of the server's estimate: soon when it is near, never hot."""
    if task.estimated_time is None:
        return 1.0
    return min(max(task.estimated_time / 4, 0.5), 5.0)


class InvalidSignature(DarkroomError):
    """A callback whose signature, timestamp or body does not check out."""


def verify_callback(headers: Mapping[str, str], body: bytes | str, secret: str) -> dict[str, Any]:
    """The task a callback carries, once its signature is checked against your account's
    webhook secret (`darkroom accounts webhook-secret ACCOUNT`): the `webhook-id`,
    `webhook-timestamp` and `webhook-signature` headers (the Standard Webhooks scheme) must
    sign this exact body, within 5 minutes of now. Raises InvalidSignature otherwise."""
    lowered = {k.lower(): v for k, v in headers.items()}
    payload = body.decode() if isinstance(body, bytes) else body
    try:
        Webhook(secret).verify(payload, lowered)
    except WebhookVerificationError as exc:
        raise InvalidSignature(str(exc)) from None
    except Exception as exc:  # a malformed header or secret the library trips on
        raise InvalidSignature(f"malformed callback: {exc}") from None
    task: dict[str, Any] = json.loads(payload)
    return task
