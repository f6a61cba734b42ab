"""Task records as frozen dataclasses: what the store returns and the API renders."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from darkroom.billing.money import to_credits
from darkroom.contract import FailureCode, Quality, Status


@dataclass(frozen=True, slots=True)
class NewTask:
    """What a create request becomes, before it has a row."""

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
    price_micro: int
    estimated_time: int
    created_at: datetime
    link_base: str | None = None

    @property
    def credits_reserved(self) -> float:
        return to_credits(self.price_micro)

    @property
    def batch_key(self) -> str:
        return batch_key(self.model, self.width, self.height)


def batch_key(model: str, width: int, height: int) -> str:
    """Tasks that may share one engine call: same model, same pixel size."""
    return f"{model}:{width}x{height}"


@dataclass(frozen=True, slots=True)
class Task:
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
    status: Status
    progress: int
    attempt: int
    worker_id: str | None
    lease_expires_at: datetime | None
    price_micro: int
    charged_micro: int | None
    estimated_time: int
    result_keys: tuple[str, ...]
    error_code: FailureCode | None
    error_message: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    results_deleted: bool
    link_base: str | None = None

    @property
    def credits_reserved(self) -> float:
        """The wire's decimal price, from the exact integer one."""
        return to_credits(self.price_micro)

    @classmethod
    def from_row(cls, row: Any) -> Task:
        m = row._mapping
        return cls(
            id=m["id"],
            account_id=m["account_id"],
            api_key_id=m["api_key_id"],
            model=m["model"],
            prompt=m["prompt"],
            size=m["size"],
            quality=Quality(m["quality"]),
            width=m["width"],
            height=m["height"],
            seed=m["seed"],
            nsfw_check=bool(m["nsfw_check"]),
            callback_url=m["callback_url"],
            status=Status(m["status"]),
            progress=m["progress"],
            attempt=m["attempt"],
            worker_id=m["worker_id"],
            lease_expires_at=m["lease_expires_at"],
            price_micro=m["price_micro"],
            charged_micro=m["charged_micro"],
            estimated_time=m["estimated_time"],
            result_keys=tuple(m["result_keys"] or ()),
            error_code=FailureCode(m["error_code"]) if m["error_code"] else None,
            error_message=m["error_message"],
            created_at=m["created_at"],
            started_at=m["started_at"],
            finished_at=m["finished_at"],
            results_deleted=bool(m["results_deleted"]),
            link_base=m["link_base"],
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
