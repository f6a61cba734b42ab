"""The API's background duties: each pass's behaviour on `darkroom.testing`'s in-memory tables
with a FakeClock and a real results folder (milliseconds; the tables' own sweeps are held to
the databases' by tests/tasks/test_outbox_conformance.py); and a pass as the API builds it, on
both databases."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import structlog
from sqlalchemy import update

from darkroom.api.services import Services
from darkroom.clock import utcnow
from darkroom.contract import Status
from darkroom.db.migrate import upgrade
from darkroom.db.schema import tasks
from darkroom.maintenance import STAGED_FILE_MAX_AGE_S, Maintenance, MaintenancePolicy
from darkroom.settings import Settings
from darkroom.storage.base import ResultStorage
from darkroom.storage.local import LocalStorage
from darkroom.tasks.model import Claim
from darkroom.tasks.results import result_key
from darkroom.testing import FakeClock, InMemoryOutbox, InMemoryTaskStore, InMemoryWorkerRegistry
from tests.conftest import PLENTY
from tests.helpers import add_task, maintenance_for, make_account, new_task

MODELS = ["krea-2-turbo"]
DAY_S = 24 * 3600
POLICY = MaintenancePolicy(
    max_attempts=3, lease_s=60, result_ttl_s=DAY_S, task_retention_s=7 * DAY_S, interval_s=1
)


class Duties:
    """Maintenance on the in-memory tables, a results folder and one FakeClock."""

    def __init__(self, tmp_path: Path, policy: MaintenancePolicy = POLICY) -> None:
        self.clock = FakeClock()
        self.outbox = InMemoryOutbox(self.clock)
        self.tasks = InMemoryTaskStore(self.clock, {1: PLENTY}, outbox=self.outbox)
        self.workers = InMemoryWorkerRegistry(self.clock, self.tasks)
        self.storage = LocalStorage(tmp_path / "results")
        self.policy = policy

    def maintenance(self, storage: ResultStorage | None = None) -> Maintenance:
        return Maintenance(
            self.policy, self.tasks, self.tasks, self.workers, storage or self.storage,  # type: ignore[arg-type]
            self.outbox, clock=self.clock,  # type: ignore[arg-type]
        )  # fmt: skip

    async def claimed(self, **fields: object) -> Claim:
        """A new task, claimed by a worker that published its file."""
        new = replace(new_task((1, 11), **fields), created_at=self.clock.now())  # type: ignore[arg-type]
        await self.tasks.create(new)
        [held] = await self.tasks.claim("w", limit=1, lease_s=POLICY.lease_s, models=MODELS)
        self.storage.put(result_key(held.id, held.attempt), b"png")
        return Claim(held.id, held.attempt)

    async def finished(self, *, completed: bool, **fields: object) -> str:
        claim = await self.claimed(**fields)
        if completed:
            assert await self.tasks.complete(claim, [result_key(claim.task_id, claim.attempt)])
        else:  # the worker died between publishing and completing; a cancel ended the task
            assert await self.tasks.cancel(claim.task_id)
        return claim.task_id


async def test_a_pass_removes_staged_files_their_worker_abandoned(tmp_path: Path) -> None:
    duties = Duties(tmp_path)
    abandoned = duties.storage.stage("task-1/0.png", b"a worker died before publishing")
    live = duties.storage.stage("task-2/0.png", b"being checked right now")
    long_ago = time.time() - STAGED_FILE_MAX_AGE_S - 60
    os.utime(abandoned.tmp, (long_ago, long_ago))

    await duties.maintenance().run_once()

    assert not abandoned.tmp.exists()
    assert live.tmp.exists()


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


@pytest.mark.each_database
async def test_expiry_deletes_then_marks_task_by_task_past_a_storage_error(
    settings: Settings,
) -> None:
    """As the API builds it, on each database."""
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


async def test_expiry_on_the_clock_deletes_then_marks_past_a_storage_error(
    tmp_path: Path,
) -> None:
    duties = Duties(tmp_path)
    broken, done, failed = [await duties.finished(completed=c) for c in (True, True, False)]
    duties.clock.advance(DAY_S - 1)
    await duties.maintenance().run_once()  # not yet a day old: kept
    assert all(duties.storage.exists(result_key(t, 1)) for t in (broken, done, failed))

    duties.clock.advance(2)
    await duties.maintenance(_Unreliable(duties.storage, broken)).run_once()  # type: ignore[arg-type]
    assert duties.storage.exists(result_key(broken, 1)), "its deletion failed: kept, not marked"
    assert not duties.storage.exists(result_key(done, 1))
    assert not duties.storage.exists(result_key(failed, 1)), "a failed task's file goes too"
    assert [e.task_id for e in await duties.tasks.expired_results(ttl_s=0)] == [broken]
    await duties.maintenance().run_once()  # the storage is back
    assert not duties.storage.exists(result_key(broken, 1))


async def test_a_task_failed_by_the_rescuer_loses_the_file_its_dead_worker_published(
    tmp_path: Path,
) -> None:
    duties = Duties(tmp_path, replace(POLICY, max_attempts=1))
    claim = await duties.claimed()
    duties.clock.advance(POLICY.lease_s + 1)  # its worker was killed: no heartbeat since

    await duties.maintenance().run_once()

    ended = await duties.tasks.get(claim.task_id)
    assert ended is not None and ended.status is Status.FAILED
    assert not duties.storage.exists(result_key(claim.task_id, claim.attempt))
    assert duties.tasks.balances[1] == PLENTY, "refunded"


async def test_a_lost_task_under_its_attempt_limit_waits_again(tmp_path: Path) -> None:
    duties = Duties(tmp_path)
    claim = await duties.claimed()
    duties.clock.advance(POLICY.lease_s - 1)
    await duties.maintenance().run_once()
    assert (await duties.tasks.get(claim.task_id)).status is Status.PROCESSING  # type: ignore[union-attr]
    duties.clock.advance(2)
    await duties.maintenance().run_once()
    again = await duties.tasks.get(claim.task_id)
    assert again is not None and (again.status, again.worker_id) == (Status.PENDING, None)


async def test_past_retention_tasks_callbacks_and_workers_are_forgotten(tmp_path: Path) -> None:
    duties = Duties(tmp_path)
    old = await duties.finished(completed=True, callback_url="https://hooks.example/a")
    await duties.workers.register("gone", device="cpu", model="krea-2-turbo")
    [delivery] = await duties.outbox.claim_due("s", limit=1, lock_s=30, now=duties.clock.now())
    await duties.outbox.record(delivery, "s", delivered=True, error="", now=duties.clock.now())
    duties.clock.advance(POLICY.task_retention_s - 10)
    recent = await duties.finished(completed=True, callback_url="https://hooks.example/b")
    maintenance = duties.maintenance()
    await maintenance.run_once()
    assert await duties.tasks.get(old) is not None  # its results went; its row stays a while
    duties.clock.advance(20)
    await duties.workers.register("here", device="cpu", model="krea-2-turbo")

    await maintenance.run_once()

    assert await duties.tasks.get(old) is None and await duties.tasks.get(recent) is not None
    assert await duties.outbox.states([old, recent]) == {recent: ("pending", 0, None)}
    assert [w.id for w in await duties.workers.all()] == ["here"]


async def test_a_model_left_without_workers_is_warned_about_once(tmp_path: Path) -> None:
    duties = Duties(tmp_path)
    await duties.tasks.create(replace(new_task((1, 11)), created_at=duties.clock.now()))
    maintenance = duties.maintenance()
    with structlog.testing.capture_logs() as logs:
        await maintenance.run_once()
        await maintenance.run_once()
        await duties.workers.register("w", device="cpu", model="krea-2-turbo")
        await maintenance.run_once()
    events = [e["event"] for e in logs if e["event"] != "results expired"]
    assert events == [
        "tasks wait with no live worker for their model",
        "a worker serves the model again, or nothing waits",
    ]
