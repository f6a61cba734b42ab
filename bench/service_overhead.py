"""What the service adds over its engine, on this machine, with the tiny engine on the CPU.

Runs the same tasks both ways in rounds: straight through the engine in this process (the
baseline), then through a real `darkroom serve` (HTTP, SQLite, worker process, moderation, PNG
files), and prints the service's wall time from first submit to last completion divided by the
engine's own, per round and in total. While the baseline runs the service is stopped (SIGSTOP),
so its idle loops take nothing from the engine alone. With --one-at-a-time it also splits each
task's span into its generation (as the worker logged it) and the rest, a figure this machine's
drifting speed does not blur.

    python bench/service_overhead.py --tasks 8 --rounds 3 --size 1:1 --quality 1K
    python bench/service_overhead.py --one-at-a-time --tasks 8 --rounds 4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.procs import create_key, create_task, service_env, serving, wait_for
from tests.helpers import add_task, make_account, worker_for

from darkroom.contract import Quality, pixel_size
from darkroom.db.database import Database
from darkroom.db.migrate import upgrade
from darkroom.engine.base import Batch, Job
from darkroom.engine.krea2 import EngineOptions, Krea2Engine
from darkroom.engine.memory import keep_freed_memory
from darkroom.engine.tiny import ensure_tiny_model
from darkroom.settings import Settings
from darkroom.storage.local import LocalStorage
from darkroom.tasks.store import TaskStore

# The tests shorten these to run fast; the benchmark measures the defaults a deployment gets.
TEST_TIMINGS = (
    "DARKROOM_LEASE_S",
    "DARKROOM_HEARTBEAT_S",
    "DARKROOM_MAINTENANCE_INTERVAL_S",
    "DARKROOM_WORKER_POLL_INTERVAL_S",
    "DARKROOM_PROGRESS_FLUSH_S",
)


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (Linux, from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@contextmanager
def paused(pid: int) -> Iterator[None]:
    """The service (`pid` and its worker) stopped while the baseline runs: an idle service still
    takes CPU (the worker looks for tasks every 0.1 s, the API's timers), which would slow the
    engine alone and flatter the ratio."""
    pids = [pid, *descendants(pid)] if Path("/proc/self/stat").exists() else []
    for each in pids:
        os.kill(each, signal.SIGSTOP)
    try:
        yield
    finally:
        for each in pids:
            os.kill(each, signal.SIGCONT)


def engine_seconds(engine: Krea2Engine, jobs: list[Job], width: int, height: int) -> float:
    start = time.perf_counter()
    for job in jobs:
        engine.generate(Batch("krea-2-turbo", width, height, (job,)), lambda _d, _t: None)
    return time.perf_counter() - start


def service_seconds(
    client: httpx.Client, key: str, url: str, jobs: list[Job], size: str, quality: Quality
) -> tuple[float, list[str]]:
    """Submit every job at once; first submit to last completion, from the task rows, and the
    tasks' ids."""
    ids = [
        create_task(client, key, size=size, quality=quality.value, prompt=j.prompt, seed=j.seed)[
            "id"
        ]
        for j in jobs
    ]
    for task_id in ids:  # a client polling once a second (the span is read from the task rows)
        final = wait_for(client, key, task_id, timeout=1200, poll_s=1.0)[-1]
        assert final["status"] == "completed"

    async def span() -> float:
        db = Database(url)
        try:
            store = TaskStore(db)
            tasks = [await store.get(task_id) for task_id in ids]
        finally:
            await db.dispose()
        created = min(t.created_at for t in tasks if t)
        finished = max(t.finished_at for t in tasks if t and t.finished_at)
        return (finished - created).total_seconds()

    return asyncio.run(span()), ids


def in_process(engine: Krea2Engine, jobs: list[Job], args: argparse.Namespace) -> None:
    """The worker alone: its loop in this process against a SQLite file, no HTTP, no API process.

    Rounds alternate the engine's own time and the worker's (claim, generate, check, encode,
    store, complete) for the same tasks: what the worker adds, apart from the rest of the service.
    """
    quality = Quality(args.quality)
    width, height = pixel_size(args.size, quality)

    async def run() -> None:
        with tempfile.TemporaryDirectory(prefix="darkroom-bench-") as tmp:
            settings = Settings(data_dir=Path(tmp), engine="tiny")  # plus any --env settings
            db = Database(settings.resolved_database_url)
            await upgrade(db)
            ids = await make_account(db, "bench")
            worker = worker_for(
                settings, db, engine, LocalStorage(settings.results_dir), worker_id="bench"
            )
            totals = [0.0, 0.0]
            for round_ in range(1, args.rounds + 1):
                engine_s = engine_seconds(engine, jobs, width, height)
                for job in jobs:
                    await add_task(
                        db, ids, size=args.size, quality=quality, prompt=job.prompt, seed=job.seed
                    )
                start = time.perf_counter()
                while await worker.run_once():
                    pass
                await worker.drain()
                worker_s = time.perf_counter() - start
                totals[0] += engine_s
                totals[1] += worker_s
                print(
                    f"round {round_}: engine {engine_s:7.2f} s, worker {worker_s:7.2f} s,"
                    f" ratio {worker_s / engine_s:.3f}"
                )
            await db.dispose()
            print(f"worker / engine: {totals[1] / totals[0]:.3f}")

    asyncio.run(run())


def generate_ms(log: str) -> dict[str, int]:
    """Each task's generation time inside the service, from the worker's `generated` lines."""
    found: dict[str, int] = {}
    for line in log.splitlines():
        if " generated " in line and (ms := re.search(r"\bgenerate_ms=(\d+)", line)):
            for task_id in re.findall(r"'([\w-]+)'", line.split("task_ids=", 1)[1]):
                found[task_id] = int(ms.group(1))
    return found


def quartiles(values: list[float], digits: int) -> str:
    return " / ".join(f"{q:.{digits}f}" for q in statistics.quantiles(values, n=4))


def worker_phases(log: str) -> dict[str, float]:
    """Median of each `*_ms` field the worker logs per batch and per task."""
    fields: dict[str, list[int]] = {}
    for name, value in re.findall(r"\b(\w+_ms)=(\d+)", log):
        fields.setdefault(name, []).append(int(value))
    return {name: statistics.median(values) for name, values in fields.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--one-at-a-time",
        action="store_true",
        help="submit each task alone, alternating with the engine task by task (latency; "
        "least sensitive to this machine's drifting speed)",
    )
    parser.add_argument("--size", default="1:1")
    parser.add_argument("--quality", default="1K", choices=[q.value for q in Quality])
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="DARKROOM_X=VALUE",
        help="a setting for the service (repeatable), e.g. DARKROOM_MODERATION_IMAGE=off",
    )
    parser.add_argument("--log", type=Path, help="keep the service's log in this file")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="the worker alone, in this process (no HTTP, no API process): what it adds",
    )
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.env)
    os.environ.update(extra_env)
    if Settings().keep_freed_memory:  # the baseline engine runs as the worker's does
        keep_freed_memory()
    quality = Quality(args.quality)
    width, height = pixel_size(args.size, quality)
    jobs = [Job(f"t{i}", f"benchmark prompt number {i}", 1000 + i) for i in range(args.tasks)]
    print(f"tasks: {args.tasks} x {args.size} {quality.value} ({width}x{height}), tiny engine, CPU")
    with tempfile.TemporaryDirectory(prefix="darkroom-bench-") as tmp:
        workdir = Path(tmp)
        model_dir = ensure_tiny_model(workdir / "tiny")
        engine = Krea2Engine.load(str(model_dir), ("krea-2-turbo",), EngineOptions())
        # Warm: with freed memory kept, the heap grows over the first few images to its size.
        engine_seconds(engine, jobs[:3], width, height)
        if args.in_process:
            in_process(engine, jobs, args)
            return
        url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
        env = service_env(workdir / "data", url, model_dir)
        for name in TEST_TIMINGS:
            env.pop(name)
        env.update(extra_env)
        key = create_key(env, "bench")
        totals = [0.0, 0.0]
        paired: list[float] = []  # one-at-a-time: each task's service time over its engine time
        added: list[float] = []  # ...and the milliseconds the service took beyond it
        lone: list[tuple[str, float, float]] = []  # (task id, engine s, service s), one at a time
        with (
            serving("serve", env, workdir / "serve.log") as service,
            httpx.Client(base_url=service.base_url, timeout=60) as client,
        ):
            for i in range(3):
                warm = create_task(
                    client, key, size=args.size, quality=quality.value, prompt=f"w{i}"
                )
                wait_for(client, key, warm["id"], timeout=600)
            # Rounds alternate the baseline and the service, so a slow spell of this shared
            # machine weighs on both instead of on whichever ran during it.
            for round_ in range(1, args.rounds + 1):
                if args.one_at_a_time:  # alternate per task: each task submitted alone
                    engine_s = service_s = 0.0
                    for job in jobs:
                        with paused(service.process.pid):
                            one_engine = engine_seconds(engine, [job], width, height)
                        one_service, (task_id,) = service_seconds(
                            client, key, url, [job], args.size, quality
                        )
                        lone.append((task_id, one_engine, one_service))
                        paired.append(one_service / one_engine)
                        added.append(1000 * (one_service - one_engine))
                        engine_s += one_engine
                        service_s += one_service
                else:  # all of the round's tasks submitted at once
                    with paused(service.process.pid):
                        engine_s = engine_seconds(engine, jobs, width, height)
                    service_s, _ = service_seconds(client, key, url, jobs, args.size, quality)
                totals[0] += engine_s
                totals[1] += service_s
                print(
                    f"round {round_}: engine {engine_s:7.2f} s, service {service_s:7.2f} s,"
                    f" ratio {service_s / engine_s:.3f}"
                )
        log = (workdir / "serve.log").read_text()
        if args.log:
            shutil.copyfile(workdir / "serve.log", args.log)
    engine_s, service_s = totals
    images = args.tasks * args.rounds
    print(f"engine alone (baseline): {engine_s:8.2f} s  ({engine_s / images:.2f} s/image)")
    print(f"service, submit->done:   {service_s:8.2f} s  ({service_s / images:.2f} s/image)")
    print(
        f"service / engine:        {service_s / engine_s:8.3f}"
        f"  (overhead {100 * (service_s / engine_s - 1):+.1f} %)"
    )
    if paired:
        # Robust to this shared machine's stalls, which land on one side of a pair at random.
        print(
            f"median of per-task ratios: {statistics.median(paired):8.3f}"
            f"  (quartiles {quartiles(paired, 3)})"
        )
        print(
            f"median ms added per task: {statistics.median(added):8.1f}  (quartiles {quartiles(added, 1)})"
        )
        # The pairs above carry this machine's drift in the engine's speed from one image to the
        # next. Split each lone task's span instead: its generation as the worker timed it, and
        # everything else (queue, claim, check, encode, store), which no pairing blurs.
        generated = generate_ms(log)
        outside = [1000 * service - generated[task] for task, _, service in lone]
        inside = [generated[task] / (1000 * engine) for task, engine, _ in lone]
        engine_ms = 1000 * statistics.median(engine for _, engine, _ in lone)
        print(
            f"per task outside generation: median {statistics.median(outside):.1f} ms"
            f" (quartiles {quartiles(outside, 1)}), {statistics.median(outside) / engine_ms:.1%}"
            f" of the engine's median {engine_ms:.0f} ms alone"
        )
        print(
            f"generation in the service / the same image alone: median"
            f" {statistics.median(inside):.3f} (quartiles {quartiles(inside, 3)})"
        )
    phases = ", ".join(f"{name} {value:g}" for name, value in worker_phases(log).items())
    print(f"worker phases, median ms: {phases}")


if __name__ == "__main__":
    main()
