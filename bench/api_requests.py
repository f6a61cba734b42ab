"""What the API process spends per request, against a bare FastAPI endpoint, as the queue grows.

Starts `darkroom api` on a fresh SQLite file (no worker: tasks stay pending) and, as the
baseline of the same run, a bare FastAPI app under the same uvicorn (`bench/bare_app.py`: one
JSON endpoint, nothing behind it). Fills the queue to each depth with pending tasks (written
straight into the table), then sends each kind of request many times over real HTTP on loopback
and divides the process's CPU time (all its threads, from /proc) by the count.
Creates come from 128 keys of one account in turn, each with the default limits (16 unfinished
tasks), as from many clients; polls ask for one pending task of the first key.
"x bare" is bare's CPU per request over darkroom's: the share of bare's request rate that one
darkroom process reaches. Each depth's requests go in rounds alternating with bare's, and the
growth with depth compares the "x bare" figures, so the machine's drift over a run cancels.
Linux only (/proc).

    python bench/api_requests.py --repeat 400 --depths 100,5000,10000
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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
from darkroom.accounts.store import AccountStore
from darkroom.contract import new_task_id
from darkroom.db.database import Database
from darkroom.db.schema import tasks
from darkroom.engine.tiny import ensure_tiny_model
from darkroom.tasks.store import TaskStore


def cpu_seconds(pid: int) -> float:
    """CPU time of process `pid` so far, all its threads, in nanoseconds' resolution (the
    scheduler's run time per thread, /proc/PID/task/TID/schedstat): /proc/PID/stat counts in
    10 ms ticks, a tenth of a round of bare's requests."""
    total = 0
    for thread in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((thread / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def interleaved(
    kinds: dict[str, tuple[int, Callable[[], object]]], repeat: int
) -> dict[str, float]:
    """CPU ms per request of each kind (its process's pid, how to send one), sent `repeat`
    times in rounds of every kind in turn, so that the machine's drift over the run weighs on
    each kind alike."""
    rounds = 8
    spent = dict.fromkeys(kinds, 0.0)
    for _ in range(rounds):
        for name, (pid, send) in kinds.items():
            time.sleep(0.05)  # the previous kind's last responses' logging
            cpu = cpu_seconds(pid)
            for _ in range(repeat // rounds):
                send()
            time.sleep(0.05)
            spent[name] += cpu_seconds(pid) - cpu
    return {name: 1000 * cpu / (rounds * (repeat // rounds)) for name, cpu in spent.items()}


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


async def more_keys(database_url: str, account: str, count: int) -> list[str]:
    """`count` new keys of `account`, with the default limits."""
    db = Database(database_url)
    try:
        store = AccountStore(db)
        return [(await store.create_key(account, f"bench-{n}"))[1] for n in range(count)]
    finally:
        await db.dispose()


BARE, CREATE, POLL = "bare", "POST /v1/images/generations", "GET /v1/tasks/{id}, pending"


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
        keys = itertools.cycle([key, *asyncio.run(more_keys(database_url, "bench", 127))])
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
            rows: list[tuple[int, dict[str, float]]] = []
            queued = 1
            theirs = create_task(client, others)["id"]
            for depth in depths:
                pending = create_task(client, key)["id"]
                asyncio.run(fill_queue(database_url, theirs, depth - queued - 1, pending))
                queued = depth
                kinds: dict[str, tuple[int, Callable[[], object]]] = {
                    BARE: (bare.pid, bare_send),
                    CREATE: (api.process.pid, lambda: create_task(client, next(keys))),
                    POLL: (
                        api.process.pid,
                        lambda p=pending: client.get(f"/v1/tasks/{p}", headers=auth),  # type: ignore[misc]
                    ),
                }
                for _, send in kinds.values():
                    send()
                rows.append((depth, interleaved(kinds, args.repeat)))
                queued += args.repeat + 1
    print(f"one `darkroom api` on SQLite, {args.repeat} requests of each kind over loopback HTTP,")
    print("in rounds alternating with the bare FastAPI endpoint (`bench/bare_app.py`)")
    print(f"{'request':30} {'queued':>7} {'CPU ms':>8} {'bare ms':>8} {'x bare':>7}")
    for depth, ms in rows:
        for name in (CREATE, POLL):
            print(
                f"{name:30} {depth:7d} {ms[name]:8.3f} {ms[BARE]:8.3f} {ms[BARE] / ms[name]:7.3f}"
            )
    for name in (CREATE, POLL):
        (_, first), (_, last) = rows[0], rows[-1]
        growth = (last[name] / last[BARE]) / (first[name] / first[BARE])
        print(f"{name}: cost at the deepest queue / the shallowest (each over bare) = {growth:.2f}")


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
