"""The worker loop: claim a batch, keep its lease alive, generate off the loop, store, finish.

Over 400 lines on purpose: a batch's whole path, and each way it can end (completed, refused by
the image check, failed in the engine, given back when the store or a remote engine is down,
taken over after a lost lease), reads in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import structlog

from darkroom.clock import utcnow
from darkroom.contract import PROMPT_TOKEN_LIMIT, FailureCode
from darkroom.db.database import Database
from darkroom.db.migrate import ensure_current
from darkroom.engine.base import (
    Batch,
    Engine,
    EngineError,
    EngineUnavailable,
    Job,
    to_image,
)
from darkroom.engine.loading import load_any_engine
from darkroom.metrics import WorkerMetrics
from darkroom.moderation.image import ImageModeration
from darkroom.settings import Settings
from darkroom.storage.base import ResultStorage, Staged
from darkroom.storage.factory import storage_from_settings
from darkroom.storage.png import default_threads, encode_png
from darkroom.tasks.model import Claim, Task
from darkroom.tasks.results import remove_leftovers, result_key
from darkroom.tasks.store import TaskStore
from darkroom.tasks.wakeup import wakeups_for
from darkroom.tasks.workers import WorkerRegistry
from darkroom.tracing import NoTracing, tracing_for
from darkroom.worker.engine_thread import EngineThread
from darkroom.worker.failures import failure_for
from darkroom.worker.outage import Outage
from darkroom.worker.progress import Progress, Stopwatch
from darkroom.worker.ready import ReadyFile
from darkroom.worker.storage_gate import EngineGate, StorageFailed, StorageGate

if TYPE_CHECKING:
    from PIL.Image import Image

    from darkroom.engine.base import Output

log = structlog.get_logger("darkroom.worker")

T = TypeVar("T")


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class WorkerPolicy:
    """What the worker loop reads of the settings, made once by `Worker.from_settings`."""

    batch_size: int
    lease_s: float
    heartbeat_s: float
    poll_interval_s: float
    progress_flush_s: float
    png_compress_level: int
    database_outage_s: float
    ready_file: Path | None

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerPolicy:
        return cls(
            batch_size=settings.worker_batch_size,
            lease_s=settings.lease_s,
            heartbeat_s=settings.heartbeat_s,
            poll_interval_s=settings.worker_poll_interval_s,
            progress_flush_s=settings.progress_flush_s,
            png_compress_level=settings.png_compress_level,
            database_outage_s=settings.worker_database_outage_s,
            ready_file=settings.worker_ready_file,
        )


class Worker:
    """The worker role. `from_settings` is its builder (it loads the engine); the constructor
    takes every collaborator ready-made, which is how tests build one."""

    def __init__(
        self,
        policy: WorkerPolicy,
        db: Database,
        engine: Engine,
        storage: ResultStorage,
        *,
        moderation: ImageModeration,
        worker_id: str | None = None,
        engine_thread: EngineThread | None = None,
        tracing: NoTracing | None = None,
        store: TaskStore | None = None,
    ) -> None:
        self.policy = policy
        self.db = db
        # The task table as a queue: the database's, or a test's in-memory one.
        self.store = store or TaskStore(db)
        self.engine = engine
        # Where the engine was loaded (and warmed), so that every generation runs there too.
        self.engine_thread = engine_thread or EngineThread()
        self.storage = storage
        self.moderation = moderation
        self.wakeups = wakeups_for(db)
        self.worker_id = worker_id or new_worker_id()
        self.log = log.bind(worker_id=self.worker_id)
        self.ready = ReadyFile(policy.ready_file, self.log)
        # Closed while the result store refuses writes, or a remote engine does not answer (and
        # until it first has): no claims, not ready.
        self.storage_gate = StorageGate(storage, self.log)
        probe = getattr(engine, "probe", None)
        self.engine_gate = EngineGate(probe, self.log) if probe is not None else None
        # Its row in the workers table: what it holds now, and how many images it has made.
        self.registry = WorkerRegistry(db)
        self._holding: set[str] = set()
        self.images_done = 0
        self.metrics = WorkerMetrics()  # served by worker/main.py on worker_metrics_port
        self.tracing = tracing or NoTracing()
        # Batches whose images are being encoded, stored and completed while the next generates.
        self._finishing: set[asyncio.Task[None]] = set()
        # Overlap pays when generation runs on an accelerator and the CPU is free. On a CPU the
        # engine already uses every core: overlapping measured no gain there (8-task bursts
        # in-process: 1.100 against 1.102, and again with the engine on its own thread and
        # freed memory kept, 1.055 against 1.052) and makes a task's completion wait, so finish
        # each batch before generating the next.
        device = getattr(engine, "device", None)
        self.overlap = getattr(device, "type", "cuda") != "cpu"
        # The image check runs beside the encoding and is the longer of the two (with ISA-L the
        # encoding takes about a third of it): the encoding leaves a core to the check, so it
        # does not preempt it (docs/performance.md, "Choices in the code").
        self._encode_threads = default_threads(spare=1)

    @classmethod
    async def from_settings(cls, settings: Settings) -> Worker:
        """Load (and warm) the engine on the thread that will run it, then build the worker."""
        # Before the minutes a model can take to load: a worker that could store nothing stops.
        storage = storage_from_settings(settings)
        await asyncio.to_thread(storage.verify)
        engine_thread = EngineThread()
        try:
            engine = await engine_thread.run(load_any_engine, settings)
        except BaseException:
            engine_thread.close()
            raise
        return cls(
            WorkerPolicy.from_settings(settings),
            Database(settings.resolved_database_url),
            engine,
            storage,
            moderation=await asyncio.to_thread(ImageModeration.from_settings, settings),
            engine_thread=engine_thread,
            tracing=tracing_for(settings.otel_endpoint, "darkroom-worker"),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set; the batch in hand is finished first.

        The database going away (a reset connection, a failover, a lock timeout) does not end
        the worker, which would cost a model reload: it backs off, keeping its model, and
        carries on when the database answers again. Only an outage longer than
        `worker_database_outage_s` stops it, with DatabaseOutage.
        """
        outage = Outage(self.policy.database_outage_s)
        beat: asyncio.Task[None] | None = None
        try:
            while not await outage.attempt(self._start, stop, self.log):
                if stop.is_set():
                    return
            beat = asyncio.create_task(self._beat())
            self.ready.mark(self.gates_open)
            self.log.info("worker ready", models=list(self.engine.models))
            look_first = True
            while not stop.is_set():
                step = functools.partial(self._step, stop, look_first)
                result = await outage.attempt(step, stop, self.log)
                # After a failure, look before claiming: the queue is unknown.
                look_first = True if result is None else result
        finally:
            self.ready.mark(False)
            await self.drain()
            if beat is not None:
                beat.cancel()
                with contextlib.suppress(Exception):
                    await self.registry.stopped(self.worker_id, images_done=self.images_done)
            await self.wakeups.close()
            await self.db.dispose()
            await asyncio.to_thread(self.tracing.shutdown)  # its last spans
            self.engine_thread.close()

    async def _start(self) -> bool:
        """The schema is this version's, and this worker's row says it is here."""
        await ensure_current(self.db)
        device = getattr(self.engine, "device", None)
        await self.registry.register(
            self.worker_id, device=str(device or "unknown"), model=self.engine.models[0]
        )
        return True

    async def _beat(self) -> None:
        """Refresh this worker's row every heartbeat; a failure waits for the next one."""
        while True:
            await asyncio.sleep(self.policy.heartbeat_s)
            await self._check_engine_alive()
            try:
                holding, done = sorted(self._holding), self.images_done
                await self.registry.refresh(self.worker_id, current_tasks=holding, images_done=done)
            except Exception:
                self.log.warning("could not refresh this worker's row", exc_info=True)
            else:
                self.ready.mark(self.gates_open)

    async def _check_engine_alive(self) -> None:
        """A remote engine whose health route fails closes its gate at once (no claims, not
        ready) rather than at the next request; the gate's probe opens it again."""
        alive = getattr(self.engine, "alive", None)
        if alive is None or self.engine_gate is None or not self.engine_gate.is_open:
            return
        if await asyncio.to_thread(alive) is False:
            self.engine_gate.failed(EngineUnavailable("its health route does not answer"))

    @property
    def gates_open(self) -> bool:
        """Ready: the result store takes writes and the engine (if remote) answers."""
        engine_up = self.engine_gate is None or self.engine_gate.is_open
        return self.storage_gate.is_open and engine_up

    async def _step(self, stop: asyncio.Event, look_first: bool) -> bool:
        """Claim and run one batch, or wait for work; whether to claim at once next time."""
        if await self.run_once(look_first=look_first):
            return False  # more may wait behind that batch: claim at once
        # Until a newly queued task wakes this worker, or the poll interval passes.
        woken = await self.wakeups.wait(stop, self.policy.poll_interval_s)
        # A wake-up means a task was just queued: claim without reading first. A poll that timed
        # out reads first, so that idle workers take no write lock.
        return not woken

    async def drain(self) -> None:
        """Wait until every generated batch is stored and finished."""
        while self._finishing:
            await asyncio.wait(set(self._finishing))

    async def run_once(self, *, look_first: bool = True) -> bool:
        """Claim and generate one batch; False when the queue had nothing for this worker.

        With `look_first`, a read for pending tasks comes before the claim, which writes: an
        idle worker polling the queue takes no write lock. Without it the claim comes at once
        (~1.5 ms sooner, when a task is known to have just been queued).

        Storing the batch's results overlaps with generating the next one, so the engine does
        not wait for PNG encoding, uploads or database writes; at most one batch is in that stage
        when a new one is claimed.
        """
        while len(self._finishing) > 1:
            await asyncio.wait(set(self._finishing), return_when=asyncio.FIRST_COMPLETED)
        for gate in (self.engine_gate, self.storage_gate):
            if gate is not None and not gate.is_open:
                if not await gate.open():
                    return False
                self.ready.mark(self.gates_open)
        if look_first and not await self.store.has_pending(self.engine.models):
            return False
        clock = Stopwatch()
        claimed = await self.store.claim(
            self.worker_id,
            # A remote engine: as many as it takes in flight (of one size: one batch).
            limit=getattr(self.engine, "concurrency", self.policy.batch_size),
            lease_s=self.policy.lease_s,
            models=self.engine.models,
        )
        if not claimed:
            return False
        await self.process(claimed, claim_ms=clock.lap())
        return True

    async def process(self, claimed: Sequence[Task], *, claim_ms: int = 0) -> None:
        # Every line about this batch, the engine's and storage's included (and its finishing
        # task, which copies this context), names its tasks.
        with structlog.contextvars.bound_contextvars(task_ids=[t.id for t in claimed]):
            await self._process(claimed, claim_ms)

    async def _process(self, claimed: Sequence[Task], claim_ms: int) -> None:
        runnable: list[Task] = []
        for task in claimed:
            if self.engine.count_tokens(task.prompt) > PROMPT_TOKEN_LIMIT:
                await self._fail(task, FailureCode.INVALID_PARAMETERS, "Prompt is too long")
            else:
                runnable.append(task)
        if not runnable:
            return
        claims = [Claim(t.id, t.attempt) for t in runnable]
        self._holding.update(t.id for t in runnable)
        progress = Progress()
        keeper = asyncio.create_task(self._keep_alive(claims, progress))
        first = runnable[0]
        batch = Batch(
            model=first.model,
            width=first.width,
            height=first.height,
            jobs=tuple(Job(t.id, t.prompt, t.seed) for t in runnable),
        )
        try:
            self.log.info(
                "generating",
                task_ids=[t.id for t in runnable],
                attempt=first.attempt,
                # From the oldest task's submission to now: how long the queue held it.
                queued_ms=round(
                    1000 * (utcnow() - min(t.created_at for t in runnable)).total_seconds()
                ),
                claim_ms=claim_ms,  # the claim's own share of that
            )
            claimed_at = utcnow()
            for task in runnable:
                self._phase("queued", task, task.created_at, claimed_at)
            clock = Stopwatch()
            images = await self.engine_thread.run(self.engine.generate, batch, progress.on_step)
            generate_ms = clock.lap()
            generated_at = utcnow()
            for task in runnable:
                self._phase("generating", task, claimed_at, generated_at, batch=len(runnable))
            self.log.info("generated", task_ids=[t.id for t in runnable], generate_ms=generate_ms)
        except EngineUnavailable as exc:
            # The engine's fault, not the tasks': back to the queue with their attempts, and
            # no claim until the engine answers again.
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            self._holding.difference_update(t.id for t in runnable)
            if self.engine_gate is not None:
                self.engine_gate.failed(exc)
            self.ready.mark(False)
            released = await self.store.release(claims)
            self.log.error("the engine does not answer; tasks released", error=str(exc),
                           tasks=released)  # fmt: skip
            return
        except Exception as exc:
            keeper.cancel()
            self._holding.difference_update(t.id for t in runnable)
            code, message = failure_for(exc)
            self.log.exception("generation failed", code=code.value)
            for task in runnable:
                await self._fail(task, code, message)
            return
        finisher = asyncio.create_task(self._finish(runnable, images, keeper))
        self._finishing.add(finisher)
        finisher.add_done_callback(self._finishing.discard)
        if not self.overlap:
            await finisher

    async def _finish(
        self, runnable: Sequence[Task], images: Sequence[Output], keeper: asyncio.Task[None]
    ) -> None:
        """Build the images (off the engine's thread), encode, store, complete; leases live on."""
        done = 0  # tasks of the batch finished (completed, or failed by the image check)
        generated_at = utcnow()
        try:
            for task, pixels in zip(runnable, images, strict=True):
                if isinstance(pixels, EngineError):  # this job alone failed (a remote engine)
                    await self._fail(task, *failure_for(pixels))
                    done += 1
                    continue
                clock = Stopwatch()
                image = await asyncio.to_thread(to_image, pixels)
                key = result_key(task.id, task.attempt)
                # Encode and write the file while the image is checked, under a name no link
                # reaches; it gets its key only if the image passes.
                staging = asyncio.ensure_future(self._stage(key, image))
                if not await self._passes_moderation(task, image):
                    with contextlib.suppress(Exception):
                        (await staging).discard()
                    done += 1
                    continue
                check_ms = clock.lap()
                staged = await staging
                stage_ms = clock.lap()  # what encoding and writing still took after the verdict
                await self._publish(staged)
                store_ms = clock.lap()
                if await self.store.complete(Claim(task.id, task.attempt), [key]):
                    self.images_done += 1
                    self.metrics.ended(task.model, "completed")
                    self._phase("finishing", task, generated_at, utcnow(), png_bytes=staged.size)
                    if task.attempt > 1:  # an earlier attempt may have published before it died
                        await remove_leftovers(self.storage, task.id, task.attempt, keep=[key])
                    self.log.info(
                        "completed",
                        task_id=task.id,
                        check_ms=check_ms,
                        stage_ms=stage_ms,
                        store_ms=store_ms,
                        complete_ms=clock.lap(),
                        png_bytes=staged.size,
                    )
                else:
                    # Cancelled, or taken over after a lost lease: this attempt's own file must
                    # not linger; the winner's, under its own key, is not this attempt's to touch.
                    await asyncio.to_thread(self.storage.delete, key)
                    self.metrics.ended(task.model, "discarded")
                    self.log.warning(
                        "task no longer ours at completion; result discarded", task_id=task.id
                    )
                done += 1
        except StorageFailed as exc:
            # The store's fault, not the tasks': requeue them with their attempts, stop claiming.
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper  # no heartbeat of these claims after they are released
            self.storage_gate.failed(exc.__cause__ or exc)
            self.ready.mark(False)
            left = [Claim(t.id, t.attempt) for t in runnable[done:]]
            released = await self.store.release(left)
            self.log.error("could not store results; tasks released", tasks=released)
        except Exception:
            # Database trouble: leave the lease to expire so another attempt runs.
            self.log.exception("could not store results; the tasks will be retried")
        finally:
            keeper.cancel()
            self._holding.difference_update(t.id for t in runnable)

    def _phase(self, name: str, task: Task, start: datetime, end: datetime, **extra: int) -> None:
        """A phase of the task's attempt, from one pair of times: its metric, and its span in
        the task's trace (darkroom/tracing.py)."""
        self.metrics.phase(task.model, name, (end - start).total_seconds())
        attributes: dict[str, str | int] = {
            "darkroom.task_id": task.id, "darkroom.attempt": task.attempt,
            "darkroom.model": task.model, **extra,
        }  # fmt: skip
        self.tracing.record(name, parent=task.trace_parent, start=start, end=end,
                            attributes=attributes)  # fmt: skip

    async def _publish(self, staged: Staged) -> None:
        try:
            await asyncio.to_thread(staged.publish)
        except Exception as exc:
            raise StorageFailed(str(exc)) from exc

    async def _stage(self, key: str, image: Image) -> Staged:
        """Encode and write on one thread (one hand-off); a failed write is StorageFailed."""
        level, threads = self.policy.png_compress_level, self._encode_threads

        def encode_and_stage() -> Staged:
            data = encode_png(image, level, threads)
            try:
                return self.storage.stage(key, data)
            except Exception as exc:
                raise StorageFailed(str(exc)) from exc

        return await asyncio.to_thread(encode_and_stage)

    async def _passes_moderation(self, task: Task, image: Image) -> bool:
        """Check the image before anything is stored; a refused or uncheckable one fails its
        task (refunded, with its callback), and nothing of it is kept."""
        try:
            verdict = await asyncio.to_thread(self.moderation.check, image, strict=task.nsfw_check)
        except Exception:
            self.log.exception("image check failed; failing the task closed", task_id=task.id)
            await self._fail(
                task, FailureCode.SERVICE_ERROR, "The image could not be checked; retry later"
            )
            return False
        if not verdict.allowed:
            self.log.info("image refused by moderation", task_id=task.id, reason=verdict.reason)
            await self._fail(
                task, FailureCode.CONTENT_POLICY_VIOLATION, f"Image refused: {verdict.reason}"
            )
            return False
        return True

    async def _fail(self, task: Task, code: FailureCode, message: str) -> None:
        """Fail the task; this attempt published nothing, but an earlier one may have."""
        if not await self.store.fail(Claim(task.id, task.attempt), code, message):
            self.metrics.ended(task.model, "discarded")
            self.log.warning("lease lost before failing", task_id=task.id)
            return
        self.metrics.ended(task.model, code.value)
        if task.attempt > 1:
            await remove_leftovers(self.storage, task.id, task.attempt - 1)

    async def _keep_alive(self, claims: list[Claim], progress: Progress) -> None:
        """Extend leases every heartbeat and write progress at most every flush interval."""
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self.policy.heartbeat_s
        written = 0
        live = list(claims)
        while live:
            await asyncio.sleep(min(self.policy.progress_flush_s, self.policy.heartbeat_s))
            try:
                if loop.time() >= next_beat:
                    lost = await self.store.heartbeat(live, lease_s=self.policy.lease_s)
                    live = [c for c in live if c.task_id not in lost]
                    next_beat = loop.time() + self.policy.heartbeat_s
                value = progress.value
                if value > written:
                    await self.store.set_progress({c: value for c in live})
                    written = value
            except Exception:  # a database hiccup must not kill the batch; the lease has slack
                self.log.exception("heartbeat failed")
