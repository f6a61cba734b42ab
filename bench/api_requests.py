"""What the API process spends per request, against a bare FastAPI endpoint, as the queue grows.

Starts `darkroom api` on a fresh SQLite file (no worker: tasks stay pending) and, as the
baseline of the same run, a bare FastAPI app under the same uvicorn (`bench/bare_app.py`: one
JSON endpoint, nothing behind it). Fills the queue to each depth with pending tasks (written
straight into the table), then sends each kind of request many times over real HTTP on loopback
and divides the process's CPU time (user and system, all its threads, from /proc) by the count.
"x bare" is bare's CPU per request over darkroom's: the share of bare's request rate that one
darkroom process reaches. Linux only (/proc).

    python bench/api_requests.py --repeat 400 --depths 100,5000,10000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.procs import create_key, create_task, free_port, service_env, serving

from bench.service_overhead import TEST_TIMINGS
from darkroom.contract import new_task_id
from darkroom.db.database import Database
from darkroom.db.schema import tasks
from darkroom.engine.tiny import ensure_tiny_model
from darkroom.tasks.store import TaskStore


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid` (all threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_request(pid: int, send: Callable[[], object], repeat: int) -> float:
    """CPU ms of process `pid` per request."""
    time.sleep(0.5)  # let timers and logging from before settle
    cpu = cpu_seconds(pid)
    for _ in range(repeat):
        send()
    time.sleep(0.3)  # the last responses' logging
    return 1000 * (cpu_seconds(pid) - cpu) / repeat


async def fill_queue(database_url: str, model_task_id: str, count: int, before: str) -> None:
    """`count` more pending tasks like `model_task_id` (another account's), created just before
    task `before` (so they are all ahead of it, as in a queue that grew before it came)."""
    db = Database(database_url)
    try:
        like, mine = await TaskStore(db).get(model_task_id), await TaskStore(db).get(before)
        assert like is not None
        assert mine is not None
        rows = []
        for n in range(count):
            created = mine.created_at - timedelta(milliseconds=count - n)
            new = replace(like, id=new_task_id(int(created.timestamp())), created_at=created)
            rows.append(new.row_values())
        for start in range(0, len(rows), 2000):
            chunk = rows[start : start + 2000]
            async with db.transaction() as conn:
                await conn.execute(insert(tasks), chunk)
    finally:
        await db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=400)
    parser.add_argument("--depths", default="100,5000,10000")
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    with tempfile.TemporaryDirectory(prefix="darkroom-bench-") as tmp:
        workdir = Path(tmp)
        # No engine runs here, but the API counts prompt tokens with the model's tokenizer.
        model_dir = ensure_tiny_model(workdir / "tiny")
        database_url = f"sqlite+aiosqlite:///{workdir}/api.db"
        env = service_env(workdir / "data", database_url, model_dir)
        for name in TEST_TIMINGS:  # the defaults a deployment gets
            env.pop(name)
        env["DARKROOM_DEFAULT_RATE_LIMIT"] = "100000000/minute"
        env["DARKROOM_QUERY_RATE_LIMIT"] = "100000000/minute"
        env["DARKROOM_DEFAULT_MAX_CONCURRENT"] = "1000000"
        subprocess.run(
            [sys.executable, "-m", "darkroom", "migrate"], env=env, check=True, capture_output=True
        )
        key = create_key(env, "bench")
        others = create_key(env, "others")  # the queue is other customers' tasks
        subprocess.run(
            [sys.executable, "-m", "darkroom", "accounts", "set-balance", "bench", "1000000000"],
            env=env,
            check=True,
            capture_output=True,
        )
        auth = {"Authorization": f"Bearer {key}"}
        bare_port = free_port()
        bare_cmd = [sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--http", "h11"]
        bare_cmd += ["--port", str(bare_port), "--log-level", "info"]
        with (
            serving("api", env, workdir / "api.log") as api,
            httpx.Client(base_url=api.base_url, timeout=30) as client,
            bare_process(bare_cmd, workdir / "bare.log") as bare,
            httpx.Client(base_url=f"http://127.0.0.1:{bare_port}", timeout=30) as bare_client,
        ):
            wait_up(bare_client)
            bare_send = lambda: bare_client.get("/v1/tasks/task-unified-1-aaaaaaaa")  # noqa: E731
            bare_send()
            bare_ms = per_request(bare.pid, bare_send, args.repeat)
            rows: list[tuple[str, int, float]] = []
            queued = 1
            theirs = create_task(client, others)["id"]
            for depth in depths:
                pending = create_task(client, key)["id"]
                asyncio.run(fill_queue(database_url, theirs, depth - queued - 1, pending))
                queued = depth
                kinds: dict[str, Callable[[], object]] = {
                    "POST /v1/images/generations": lambda: create_task(client, key),
                    "GET /v1/tasks/{id}, pending": lambda p=pending: client.get(  # type: ignore[misc]
                        f"/v1/tasks/{p}", headers=auth
                    ),
                }
                for name, send in kinds.items():
                    send()
                    rows.append((name, depth, per_request(api.process.pid, send, args.repeat)))
                queued += args.repeat + 1
    print(f"one `darkroom api` on SQLite, {args.repeat} requests each over loopback HTTP")
    print(f"bare FastAPI JSON endpoint: {bare_ms:.3f} CPU ms per request")
    print(f"{'request':32} {'queued':>7} {'CPU ms':>8} {'x bare':>7}")
    for name, depth, ms in rows:
        print(f"{name:32} {depth:7d} {ms:8.3f} {bare_ms / ms:7.3f}")
    for name in dict.fromkeys(r[0] for r in rows):
        costs = [ms for n, _, ms in rows if n == name]
        print(f"{name}: cost at the deepest queue / the shallowest = {costs[-1] / costs[0]:.2f}")


@contextmanager
def bare_process(cmd: list[str], log: Path) -> Iterator[subprocess.Popen[str]]:
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            yield proc
        finally:
            proc.terminate()
            proc.wait(10)


def wait_up(client: httpx.Client) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            client.get("/docs")
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("the bare app did not start")


if __name__ == "__main__":
    main()
