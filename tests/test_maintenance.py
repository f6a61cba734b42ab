"""The API's background duties, run once against a real database and results folder."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from darkroom.api.services import Services
from darkroom.clock import utcnow
from darkroom.contract import Status
from darkroom.db.migrate import upgrade
from darkroom.db.schema import tasks
from darkroom.maintenance import STAGED_FILE_MAX_AGE_S
from darkroom.settings import Settings
from darkroom.storage.local import LocalStorage
from darkroom.tasks.model import Claim
from darkroom.tasks.results import result_key
from tests.helpers import add_task, maintenance_for, make_account

# The SQL or the locking under test differs by backend.
pytestmark = pytest.mark.each_database


async def test_a_pass_removes_staged_files_their_worker_abandoned(settings: Settings) -> None:
    services = Services.from_settings(settings)
    try:
        await upgrade(services.db)
        abandoned = services.storage.stage("task-1/0.png", b"a worker died before publishing")
        live = services.storage.stage("task-2/0.png", b"being checked right now")
        long_ago = time.time() - STAGED_FILE_MAX_AGE_S - 60
        os.utime(abandoned.tmp, (long_ago, long_ago))

        await maintenance_for(services).run_once()

        assert not abandoned.tmp.exists()
        assert live.tmp.exists()
    finally:
        await services.db.dispose()


class _Unreliable:
    """The real results folder, but deleting under one task fails (a storage outage there)."""

    def __init__(self, inner: LocalStorage, broken_task: str) -> None:
        self.inner = inner
        self.broken_task = broken_task

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def delete(self, key: str) -> None:
        if key.startswith(self.broken_task + "/"):
            raise OSError("storage unavailable")
        self.inner.delete(key)


async def _finish(services: Services, *, completed: bool) -> str:
    """A task of the default model run to its end by a worker that published its file."""
    ids = await make_account(services.db, f"acct-{completed}-{time.monotonic_ns()}")
    task = await add_task(services.db, ids)
    [claimed] = await services.tasks.claim("w", limit=1, lease_s=60, models=["krea-2-turbo"])
    key = result_key(task.id, claimed.attempt)
    services.storage.put(key, b"png")
    claim = Claim(task.id, claimed.attempt)
    if completed:
        assert await services.tasks.complete(claim, [key])
    else:  # the worker died between publishing and completing; a cancel ended the task
        assert await services.tasks.cancel(task.id)
    return task.id


async def test_expiry_deletes_then_marks_task_by_task_past_a_storage_error(
    settings: Settings,
) -> None:
    services = Services.from_settings(settings)
    try:
        await upgrade(services.db)
        broken, done, failed = [await _finish(services, completed=c) for c in (True, True, False)]
        async with services.db.transaction() as conn:
            await conn.execute(update(tasks).values(finished_at=utcnow() - timedelta(days=2)))
        storage = services.storage
        assert isinstance(storage, LocalStorage)
        flaky_storage = _Unreliable(storage, broken)

        await maintenance_for(services, flaky_storage).run_once()

        assert storage.exists(result_key(broken, 1)), "its deletion failed: kept, not marked"
        assert not storage.exists(result_key(done, 1))
        assert not storage.exists(result_key(failed, 1)), "a failed task's file goes too"
        left = [e.task_id for e in await services.retention.expired_results(ttl_s=0)]
        assert left == [broken], "only the task whose files are still there is left to do"

        await maintenance_for(services).run_once()  # the storage is back
        assert not storage.exists(result_key(broken, 1))
        assert await services.retention.expired_results(ttl_s=0) == []
    finally:
        await services.db.dispose()


async def test_a_task_failed_by_the_rescuer_loses_the_file_its_dead_worker_published(
    settings: Settings,
) -> None:
    settings = settings.model_copy(update={"max_attempts": 1})
    services = Services.from_settings(settings)
    try:
        await upgrade(services.db)
        ids = await make_account(services.db)
        task = await add_task(services.db, ids)
        [claimed] = await services.tasks.claim("w", limit=1, lease_s=60, models=["krea-2-turbo"])
        key = result_key(task.id, claimed.attempt)
        services.storage.put(key, b"published, then the worker was killed")
        async with services.db.transaction() as conn:
            await conn.execute(
                update(tasks).values(lease_expires_at=utcnow() - timedelta(seconds=1))
            )

        await maintenance_for(services).run_once()

        ended = await services.tasks.get(task.id)
        assert ended is not None and ended.status is Status.FAILED
        assert not services.storage.exists(key)
    finally:
        await services.db.dispose()
