"""What the service adds over its engine, on this machine, with the tiny engine on the CPU.

Runs the same tasks twice in one go: first straight through the engine in this process (the
baseline), then through a real `darkroom serve` (HTTP, SQLite, worker process, PNG files), and
prints the service's wall time from first submit to last completion divided by the engine's own.

    python bench/service_overhead.py --tasks 8 --size 1:1 --quality 1K
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.procs import create_key, create_task, service_env, serving, wait_for

from darkroom.contract import Quality, pixel_size
from darkroom.db.database import Database
from darkroom.engine.base import Batch, Job
from darkroom.engine.krea2 import EngineOptions, Krea2Engine
from darkroom.engine.tiny import ensure_tiny_model
from darkroom.tasks.store import TaskStore


def engine_seconds(model_dir: Path, jobs: list[Job], width: int, height: int) -> float:
    engine = Krea2Engine.load(str(model_dir), ("krea-2-turbo",), EngineOptions())
    engine.generate(Batch("krea-2-turbo", width, height, jobs[:1]), lambda _d, _t: None)  # warm
    start = time.perf_counter()
    for job in jobs:
        engine.generate(Batch("krea-2-turbo", width, height, (job,)), lambda _d, _t: None)
    return time.perf_counter() - start


def service_seconds(
    workdir: Path, model_dir: Path, jobs: list[Job], size: str, quality: Quality
) -> float:
    url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    # Production timings (the tests shorten leases and flush intervals to run fast).
    env = service_env(
        workdir / "data",
        url,
        model_dir,
        DARKROOM_LOG_LEVEL="WARNING",
        DARKROOM_LEASE_S="60",
        DARKROOM_HEARTBEAT_S="10",
        DARKROOM_MAINTENANCE_INTERVAL_S="5",
        DARKROOM_WORKER_POLL_INTERVAL_S="0.5",
        DARKROOM_PROGRESS_FLUSH_S="0.5",
    )
    key = create_key(env, "bench")
    with (
        serving("serve", env, workdir / "serve.log") as service,
        httpx.Client(base_url=service.base_url, timeout=60) as client,
    ):
        warm = create_task(client, key, size=size, quality=quality.value, prompt="warm-up")
        wait_for(client, key, warm["id"], timeout=600)
        ids = [
            create_task(
                client, key, size=size, quality=quality.value, prompt=j.prompt, seed=j.seed
            )["id"]
            for j in jobs
        ]
        for task_id in ids:  # a client polling once a second, as hosted-API clients do
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

    return asyncio.run(span())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--size", default="1:1")
    parser.add_argument("--quality", default="1K", choices=[q.value for q in Quality])
    args = parser.parse_args()
    quality = Quality(args.quality)
    width, height = pixel_size(args.size, quality)
    jobs = [Job(f"t{i}", f"benchmark prompt number {i}", 1000 + i) for i in range(args.tasks)]
    with tempfile.TemporaryDirectory(prefix="darkroom-bench-") as tmp:
        workdir = Path(tmp)
        model_dir = ensure_tiny_model(workdir / "tiny")
        engine_s = engine_seconds(model_dir, jobs, width, height)
        service_s = service_seconds(workdir, model_dir, jobs, args.size, quality)
    print(f"tasks: {args.tasks} x {args.size} {quality.value} ({width}x{height}), tiny engine, CPU")
    print(f"engine alone (baseline): {engine_s:8.2f} s  ({engine_s / args.tasks:.2f} s/image)")
    print(f"service, submit->done:   {service_s:8.2f} s  ({service_s / args.tasks:.2f} s/image)")
    print(
        f"service / engine:        {service_s / engine_s:8.3f}  (overhead {100 * (service_s / engine_s - 1):+.1f} %)"
    )


if __name__ == "__main__":
    main()
