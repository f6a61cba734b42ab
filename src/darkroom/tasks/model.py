"""Task records as frozen dataclasses: what the store returns and the API renders."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from darkroom.billing.money import to_credits
from darkroom.contract import FailureCode, Quality, Status


@dataclass(frozen=True, slots=True)
class NewTask:
    """What a create request becomes, before it has a row: the one declaration of a task's
    own fields (`Task` adds its state; the store inserts these as they are named here)."""

    id: str
    account_id: int
    api_key_id: int
    model: str
    prompt: str
    size: str
    quality: Quality
    width: int
    height: int
    seed: int
    nsfw_check: bool
    callback_url: str | None
    # The base URL the task was created through: its callback's result links use it.
    link_base: str | None
    price_micro: int
    estimated_time: int
    created_at: datetime
    # The creating request's W3C traceparent, when tracing is on (darkroom/tracing.py).
    trace_parent: str | None

    @property
    def credits_reserved(self) -> float:
        """The wire's decimal price, from the exact integer one."""
        return to_credits(self.price_micro)

    @property
    def batch_key(self) -> str:
        return batch_key(self.model, self.width, self.height)

    def row_values(self) -> dict[str, Any]:
        """The columns of its row as created: these fields, then a pending task's state."""
        values = {f.name: getattr(self, f.name) for f in fields(NewTask)}
        values["quality"] = self.quality.value
        return values | {
            "batch_key": self.batch_key,
            "status": Status.PENDING.value,
            "progress": 0,
            "attempt": 0,
        }


def batch_key(model: str, width: int, height: int) -> str:
    """Tasks that may share one engine call: same model, same pixel size."""
    return f"{model}:{width}x{height}"


@dataclass(frozen=True, slots=True)
class Task(NewTask):
    """A task as its row holds it: its fields, and the state the queue moved it through."""

    status: Status
    progress: int
    attempt: int
    worker_id: str | None
    lease_expires_at: datetime | None
    charged_micro: int | None
    result_keys: tuple[str, ...]
    error_code: FailureCode | None
    error_message: str | None
    started_at: datetime | None
    finished_at: datetime | None
    results_deleted: bool

    @classmethod
    def queued(cls, new: NewTask) -> Task:
        """The task `new` becomes once inserted (`row_values`, every other column empty)."""
        return cls(
            **{f.name: getattr(new, f.name) for f in fields(NewTask)},
            status=Status.PENDING,
            progress=0,
            attempt=0,
            worker_id=None,
            lease_expires_at=None,
            charged_micro=None,
            result_keys=(),
            error_code=None,
            error_message=None,
            started_at=None,
            finished_at=None,
            results_deleted=False,
        )

    @classmethod
    def from_row(cls, row: Any) -> Task:
        """The task of a `tasks` row: every field by its column's name, typed."""
        m = row._mapping
        values = {f.name: m[f.name] for f in fields(cls)}
        return cls(
            **values
            | {
                "quality": Quality(values["quality"]),
                "status": Status(values["status"]),
                "nsfw_check": bool(values["nsfw_check"]),
                "result_keys": tuple(values["result_keys"] or ()),
                "error_code": FailureCode(values["error_code"]) if values["error_code"] else None,
                "results_deleted": bool(values["results_deleted"]),
            }
        )


@dataclass(frozen=True, slots=True)
class Claim:
    """A worker's hold on a task: the fence is the attempt number it claimed."""

    task_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A create's Idempotency-Key header and the hash of the body it came with."""

    key: str
    request_hash: str
