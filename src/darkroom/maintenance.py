"""Background duties of API processes: lease rescue and the expiry sweeps (results, tasks,
idempotency keys, abandoned staged files).

Safe in many replicas at once: each step is a conditional UPDATE or DELETE that claims its rows.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

import structlog

from darkroom.clock import Clock, SystemClock
from darkroom.settings import Settings
from darkroom.storage.base import ResultStorage
from darkroom.tasks.outbox import Outbox
from darkroom.tasks.results import attempt_keys, delete_keys, remove_leftovers
from darkroom.tasks.retention import TaskRetention
from darkroom.tasks.store import TaskStore
from darkroom.tasks.workers import WorkerRegistry

log = structlog.get_logger("darkroom.maintenance")

IDEMPOTENCY_WINDOW_S = 24 * 3600
# A staged result is published or discarded within milliseconds; one this old has no owner left.
STAGED_FILE_MAX_AGE_S = 3600


@dataclass(frozen=True, slots=True)
class MaintenancePolicy:
    """What the duties read of the settings, made once at the composition root."""

    max_attempts: int
    lease_s: float
    result_ttl_s: int
    task_retention_s: int
    interval_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> MaintenancePolicy:
        return cls(
            max_attempts=settings.max_attempts,
            lease_s=settings.lease_s,
            result_ttl_s=settings.result_ttl_s,
            task_retention_s=settings.task_retention_s,
            interval_s=settings.maintenance_interval_s,
        )


class Maintenance:
    def __init__(
        self,
        policy: MaintenancePolicy,
        tasks: TaskStore,
        retention: TaskRetention,
        workers: WorkerRegistry,
        storage: ResultStorage,
        outbox: Outbox,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.policy = policy
        self.clock = clock or SystemClock()
        self.tasks = tasks
        self.retention = retention
        self.storage = storage
        self.outbox = outbox
        self.workers = workers
        self._unserved: set[str] = set()  # models already warned about

    async def run_once(self) -> None:
        policy, tasks = self.policy, self.tasks
        rescued = await tasks.rescue_expired(max_attempts=policy.max_attempts)
        if rescued.requeued or rescued.failed:
            log.warning(
                "rescued tasks with expired leases",
                requeued=list(rescued.requeued),
                failed=list(rescued.failed),
            )
        for task_id, attempt in rescued.failed_attempts.items():
            await remove_leftovers(self.storage, task_id, attempt)
        await self.expire_results()
        await self.watch_workers()
        swept = await asyncio.to_thread(self.storage.sweep_staging, STAGED_FILE_MAX_AGE_S)
        if swept:
            log.warning("removed abandoned staged result files", files=swept)
        await self.retention.delete_finished_before(retention_s=policy.task_retention_s)
        await self.outbox.delete_finished_before(
            self.clock.now() - timedelta(seconds=policy.task_retention_s)
        )
        # A retry comes within minutes; a day is generous and keeps the table small.
        await self.retention.forget_idempotency_keys_before(age_s=IDEMPOTENCY_WINDOW_S)

    async def expire_results(self) -> None:
        """Delete the files of tasks past their results' lifetime, then mark them deleted, task
        by task: a storage error leaves that task for the next pass and stops none of the rest."""
        storage, retention = self.storage, self.retention
        for expired in await retention.expired_results(ttl_s=self.policy.result_ttl_s):
            keys = {*attempt_keys(expired.task_id, expired.attempt), *expired.result_keys}
            try:
                await asyncio.to_thread(delete_keys, storage, sorted(keys))
            except Exception:
                log.exception("could not delete expired results", task_id=expired.task_id)
                continue
            await retention.mark_results_deleted(expired.task_id)
            log.info("results expired", task_id=expired.task_id, files=len(expired.result_keys))

    async def watch_workers(self) -> None:
        """Warn once when a model's tasks start waiting with no live worker to run them, and
        say when one is back; forget workers not seen for the task retention."""
        unserved = await self.workers.models_without_workers(self.policy.lease_s)
        for model in sorted(set(unserved) - self._unserved):
            log.warning("tasks wait with no live worker for their model", model=model,
                        pending=unserved[model])  # fmt: skip
        for model in sorted(self._unserved - set(unserved)):
            log.info("a worker serves the model again, or nothing waits", model=model)
        self._unserved = set(unserved)
        retention = timedelta(seconds=self.policy.task_retention_s)
        await self.workers.forget_stopped_before(self.clock.now() - retention)

    async def run_forever(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("maintenance pass failed; retrying next interval")
            await self.clock.sleep(self.policy.interval_s)
