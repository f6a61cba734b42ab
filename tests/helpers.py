"""Helpers shared by the tests: builders of accounts and task rows, the API's duties."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import func, select

from darkroom.accounts.store import AccountStore, KeyLimits
from darkroom.billing.money import to_micro
from darkroom.clock import utcnow
from darkroom.contract import Quality, new_task_id, pixel_size
from darkroom.db.database import Database
from darkroom.db.schema import accounts, tasks
from darkroom.tasks.model import NewTask, Task
from darkroom.tasks.store import TaskStore

if TYPE_CHECKING:  # the benchmarks import this module without the API's dependencies
    from darkroom.api.services import Services
    from darkroom.maintenance import Maintenance
    from darkroom.settings import Settings
    from darkroom.storage.base import ResultStorage
    from darkroom.worker.worker import Worker


async def make_account(db: Database, name: str = "acct") -> tuple[int, int]:
    store = AccountStore(db)
    account = await store.create_account(name, credits_micro=10**12)
    info, _ = await store.create_key(name)
    return account.id, info.id


def new_task(
    ids: tuple[int, int],
    *,
    size: str = "1:1",
    quality: Quality = Quality.K1,
    prompt: str = "p",
    seed: int = 1,
    nsfw_check: bool = False,
    callback_url: str | None = None,
    model: str = "krea-2-turbo",
) -> NewTask:
    """A task to create for the account and key `ids`, at the contract's price."""
    width, height = pixel_size(size, quality)
    now = utcnow()
    return NewTask(
        id=new_task_id(int(now.timestamp())),
        account_id=ids[0],
        api_key_id=ids[1],
        model=model,
        prompt=prompt,
        size=size,
        quality=quality,
        width=width,
        height=height,
        seed=seed,
        nsfw_check=nsfw_check,
        callback_url=callback_url,
        link_base=None,
        price_micro=450_000 if quality is Quality.K1 else 1_800_000,
        estimated_time=10,
        created_at=now,
        trace_parent=None,
    )


async def add_task(db: Database, ids: tuple[int, int], **fields: Any) -> Task:
    """Create `new_task(ids, **fields)`."""
    return await TaskStore(db).create(new_task(ids, **fields))


def maintenance_for(services: Services, storage: ResultStorage | None = None) -> Maintenance:
    """The API's background duties as `create_app` builds them, optionally on another store."""
    return services.maintenance(storage)


async def task_count(db: Database) -> int:
    async with db.engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(tasks))).scalar_one()


def assert_error(
    response: httpx.Response, status: int, code: str | None, type_: str | None, param: str | None
) -> None:
    """The contract's error body; `code` or `type_` None: any string (`param` None: none)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == code if code is not None else isinstance(error["code"], str)
    assert error["type"] == type_ if type_ is not None else isinstance(error["type"], str)
    assert isinstance(error["message"], str) and error["message"]
    assert error.get("param") == param
    assert "Traceback" not in response.text


async def funded_key(
    db: Database,
    account: str,
    credits: float,
    *,
    limit: float | None = None,
    max_concurrent: int | None = None,
) -> tuple[dict[str, str], int]:
    store = AccountStore(db)
    if await store.get_account(account) is None:
        await store.create_account(account, "pro", credits_micro=to_micro(credits))
    credit_limit = to_micro(limit) if limit is not None else None
    info, key = await store.create_key(
        account, limits=KeyLimits(credit_limit_micro=credit_limit, max_concurrent=max_concurrent)
    )
    return {"Authorization": f"Bearer {key}"}, info.id


async def balance(db: Database, account: str) -> tuple[int, int]:
    """(balance, used) in micro-credits."""
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                select(accounts.c.balance_micro, accounts.c.used_micro).where(
                    accounts.c.name == account
                )
            )
        ).one()
    return row.balance_micro, row.used_micro


def worker_for(
    settings: Settings, db: Database, engine: Any, storage: ResultStorage, **options: Any
) -> Worker:
    """A worker as `Worker.from_settings` builds one, on an engine and store made here: its
    policy and (unless given) its image check from `settings`."""
    from darkroom.moderation.image import ImageModeration
    from darkroom.worker.worker import Worker, WorkerPolicy

    options.setdefault("moderation", ImageModeration.from_settings(settings))
    return Worker(WorkerPolicy.from_settings(settings), db, engine, storage, **options)
