"""The worker in-process with the tiny engine: batches, recorded seeds, failures with codes."""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from darkroom.contract import FailureCode, Status
from darkroom.db.database import Database
from darkroom.engine.base import Batch, StepCallback
from darkroom.engine.krea2 import EngineOptions, Krea2Engine
from darkroom.settings import Settings
from darkroom.storage.local import LocalStorage
from darkroom.tasks.store import TaskStore
from darkroom.testing import FakeEngine
from darkroom.worker.worker import Worker
from tests.helpers import add_task, make_account, worker_for

if TYPE_CHECKING:
    from darkroom.engine.base import Pixels


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Krea2Engine:
    return Krea2Engine.load(str(tiny_model_dir), ("krea-2-turbo",), EngineOptions())


class CountingEngine:
    """The real engine, counting its calls and batch sizes."""

    def __init__(self, inner: Krea2Engine) -> None:
        self.inner = inner
        self.models = inner.models
        self.batches: list[int] = []
        self.threads: list[int] = []  # the thread each generation ran on

    def count_tokens(self, prompt: str) -> int:
        return self.inner.count_tokens(prompt)

    def generate(self, batch: Batch, on_step: StepCallback) -> list[Pixels]:
        self.batches.append(len(batch.jobs))
        self.threads.append(threading.get_ident())
        return self.inner.generate(batch, on_step)


def make_worker(settings: Settings, db: Database, engine: object) -> Worker:
    return worker_for(settings, db, engine, LocalStorage(settings.results_dir), worker_id="test-w")


async def test_compatible_tasks_run_as_one_batch(
    settings: Settings, db: Database, engine: Krea2Engine
) -> None:
    settings = settings.model_copy(update={"worker_batch_size": 4})
    ids = await make_account(db)
    batchable = [await add_task(db, ids, size="9:16", seed=s, prompt=f"p{s}") for s in (5, 6, 7)]
    other = await add_task(db, ids, size="1:1")
    counting = CountingEngine(engine)
    worker = make_worker(settings, db, counting)
    assert await worker.run_once()
    assert await worker.run_once()
    assert not await worker.run_once()
    await worker.drain()
    assert counting.batches == [3, 1]
    store = TaskStore(db)
    for task in [*batchable, other]:
        done = await store.get(task.id)
        assert done is not None
        assert done.status is Status.COMPLETED, done
        assert done.progress == 100
        data = LocalStorage(settings.results_dir).path_for(done.result_keys[0]).read_bytes()
        assert Image.open(io.BytesIO(data)).size == (done.width, done.height)


async def test_every_generation_runs_on_the_one_thread_that_loaded_the_engine(
    settings: Settings, db: Database, engine: Krea2Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's per-thread state (OpenMP teams, CUDA graphs) stays warm only on one thread."""
    counting = CountingEngine(engine)
    loaded_on: list[int] = []

    def load_engine(_settings: Settings) -> CountingEngine:
        loaded_on.append(threading.get_ident())
        return counting

    monkeypatch.setattr("darkroom.engine.factory.load_engine", load_engine)
    ids = await make_account(db)
    tasks = [await add_task(db, ids, seed=seed, prompt=f"p{seed}") for seed in range(1, 7)]
    worker = await Worker.from_settings(settings)
    try:
        while await worker.run_once():
            pass
        await worker.drain()
    finally:
        await worker.db.dispose()
        worker.engine_thread.close()
    assert len(loaded_on) == 1
    assert loaded_on[0] != threading.get_ident()  # not the event loop's thread
    assert counting.threads == [loaded_on[0]] * 6
    for task in tasks:
        done = await TaskStore(db).get(task.id)
        assert done is not None and done.status is Status.COMPLETED, done


async def test_too_long_prompt_fails_the_task_when_only_the_worker_can_count(
    settings: Settings, db: Database, engine: Krea2Engine
) -> None:
    ids = await make_account(db)
    long_task = await add_task(db, ids, prompt="Z" * 641)
    worker = make_worker(settings, db, engine)
    assert await worker.run_once()
    await worker.drain()
    failed = await TaskStore(db).get(long_task.id)
    assert failed is not None
    assert failed.status is Status.FAILED
    assert failed.error_code is FailureCode.INVALID_PARAMETERS
    assert failed.error_message == "Prompt is too long"


class OutOfMemoryError(RuntimeError):
    """Named like torch's, which the worker recognises by name (no torch import in the loop)."""


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (RuntimeError("kernel exploded at 0xdeadbeef"), FailureCode.SERVICE_ERROR),
        (OutOfMemoryError("CUDA out of memory"), FailureCode.RESOURCE_EXHAUSTED),
    ],
)
async def test_engine_errors_fail_the_task_with_a_safe_message(
    settings: Settings, db: Database, exc: BaseException, code: FailureCode
) -> None:
    ids = await make_account(db)
    task = await add_task(db, ids)
    assert await make_worker(settings, db, FakeEngine(fail_with=exc)).run_once()
    failed = await TaskStore(db).get(task.id)
    assert failed is not None
    assert failed.status is Status.FAILED
    assert failed.error_code is code
    assert "0xdeadbeef" not in (failed.error_message or "")
    assert not LocalStorage(settings.results_dir).exists(f"{task.id}/1.png")


class CancellingEngine(CountingEngine):
    """The real engine; while it generates, the operator cancels the task."""

    def __init__(self, inner: Krea2Engine, store: TaskStore, loop: asyncio.AbstractEventLoop):
        super().__init__(inner)
        self.store, self.loop = store, loop

    def generate(self, batch: Batch, on_step: StepCallback) -> list[Pixels]:
        task_id = batch.jobs[0].task_id
        assert asyncio.run_coroutine_threadsafe(self.store.cancel(task_id), self.loop).result()
        return super().generate(batch, on_step)


async def test_a_task_cancelled_while_generating_keeps_no_result(
    settings: Settings, db: Database, engine: Krea2Engine
) -> None:
    ids = await make_account(db)
    task = await add_task(db, ids)
    store = TaskStore(db)
    worker = make_worker(settings, db, CancellingEngine(engine, store, asyncio.get_running_loop()))
    assert await worker.run_once()
    await worker.drain()
    final = await store.get(task.id)
    assert final is not None and final.status is Status.FAILED
    assert final.error_code is FailureCode.REQUEST_CANCELLED
    assert not (Path(settings.results_dir) / task.id).exists()


async def test_a_batch_from_the_fake_engine_is_stored_checked_and_completed(
    settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker around an engine that needs no model: every step of the loop but generation.
    The engine hands back pixels; the worker builds each image in its finishing step, off the
    engine's thread (which is free for the next batch by then)."""
    import darkroom.worker.worker as worker_module

    built_on: list[int] = []

    def to_image(pixels: Pixels) -> Image.Image:
        built_on.append(threading.get_ident())
        return Image.fromarray(pixels)

    monkeypatch.setattr(worker_module, "to_image", to_image)
    ids = await make_account(db)
    task = await add_task(db, ids, size="16:9", seed=3)
    fake = FakeEngine()
    assert await make_worker(settings, db, fake).run_once()
    assert len(built_on) == 1 and built_on[0] not in fake.threads
    done = await TaskStore(db).get(task.id)
    assert done is not None and done.status is Status.COMPLETED and done.progress == 100
    [batch] = fake.batches
    assert (batch.width, batch.height) == (1344, 768) and batch.jobs[0].seed == 3
    path = LocalStorage(settings.results_dir).path_for(done.result_keys[0])
    with Image.open(path) as image:
        assert image.size == (1344, 768)
        assert image.getpixel((0, 0)) == (3 * 73, 3 * 151 % 256, 3 * 199 % 256)
