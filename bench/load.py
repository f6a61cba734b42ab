"""A mixed load against real darkroom processes on loopback, then a drain and an audit.

Two topologies: `serve` (one process: API and a worker child, SQLite, local files) and `fleet`
(two `darkroom api` and two `darkroom worker` processes on PostgreSQL and Redis, results on a
shared folder). For `--duration` seconds, at once:

- creators: `--keys` keys (one account each, at most `--max-concurrent` unfinished tasks per
  key) each create a 1K task every `--create-every` seconds: far beyond the tiny engine's pace,
  so keys reach their concurrency limit and get 429 with Retry-After;
- pollers: `--pollers` clients poll tasks already accepted (mostly pending), one poll each per
  50 ms;
- streams: `--streams` event streams opened on pending tasks by two keys (so the per-key cap
  answers some of them 429), each held until the task ends or the load stops;
- a greedy key (its own account, 60 creates a minute) creating from 4 clients without pause.

It prints per kind: requests, requests/s, p50 and p99 latency (streams: time to the first
event), and the statuses seen. Then it stops the load, waits up to `--drain` seconds for every
accepted task to end, and audits: every accepted task ended; every account's used credits are
exactly its completed tasks' price; no result file exists for a failed task, and each completed
task's file does. Exit status 1 if the audit fails.

    python bench/load.py --topology serve
    python bench/load.py --topology fleet --postgres postgresql://postgres@127.0.0.1:5432/test \\
        --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.procs import running, service_env, serving

from bench.database import scratch_database
from darkroom.accounts.store import AccountStore, KeyLimits
from darkroom.billing.money import to_micro
from darkroom.db.database import Database
from darkroom.db.migrate import upgrade
from darkroom.engine.tiny import ensure_tiny_model

PRICE_1K = 0.45
CREDITS = 10_000.0


@dataclass
class Kind:
    """What one kind of request saw."""

    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)

    def record(self, status: int | str, seconds: float) -> None:
        self.statuses[str(status)] += 1
        self.latencies_s.append(seconds)


@dataclass
class Load:
    bases: list[str]
    keys: list[str]
    greedy: str
    args: argparse.Namespace
    kinds: dict[str, Kind] = field(default_factory=lambda: defaultdict(Kind))
    accepted: dict[str, str] = field(default_factory=dict)  # task id -> its key
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def base(self) -> str:
        return random.choice(self.bases)

    async def create(self, client: httpx.AsyncClient, key: str, kind: str) -> None:
        started = time.perf_counter()
        try:
            response = await client.post(
                f"{self.base()}/v1/images/generations",
                json={"model": "krea-2-turbo", "prompt": "a lighthouse at dusk"},
                headers={"Authorization": f"Bearer {key}"},
            )
        except httpx.HTTPError as exc:
            self.kinds[kind].record(type(exc).__name__, time.perf_counter() - started)
            return
        self.kinds[kind].record(response.status_code, time.perf_counter() - started)
        if response.status_code == 200:
            self.accepted[response.json()["id"]] = key

    async def creator(self, client: httpx.AsyncClient, key: str) -> None:
        await asyncio.sleep(random.uniform(0, self.args.create_every))
        while not self.stopping.is_set():
            await self.create(client, key, "create")
            await self.pause(self.args.create_every)

    async def greedy_creator(self, client: httpx.AsyncClient) -> None:
        while not self.stopping.is_set():
            await self.create(client, self.greedy, "create (greedy key)")

    async def poller(self, client: httpx.AsyncClient) -> None:
        while not self.stopping.is_set():
            if not self.accepted:
                await self.pause(0.05)
                continue
            task_id, key = random.choice(list(self.accepted.items()))
            started = time.perf_counter()
            try:
                response = await client.get(
                    f"{self.base()}/v1/tasks/{task_id}",
                    headers={"Authorization": f"Bearer {key}"},
                )
                self.kinds["poll"].record(response.status_code, time.perf_counter() - started)
            except httpx.HTTPError as exc:
                self.kinds["poll"].record(type(exc).__name__, time.perf_counter() - started)
            await self.pause(0.05)

    async def stream(self, client: httpx.AsyncClient, key: str) -> None:
        """One event stream on a task of `key`'s, held until it ends or the load stops; the
        latency recorded is the time to its first event."""
        while not self.stopping.is_set():
            mine = [t for t, k in self.accepted.items() if k == key]
            if mine:
                break
            await self.pause(0.1)
        else:
            return
        started = time.perf_counter()
        url = f"{self.base()}/v1/tasks/{random.choice(mine)}/events"
        try:
            async with client.stream(
                "GET", url, headers={"Authorization": f"Bearer {key}"}
            ) as response:
                if response.status_code != 200:
                    self.kinds["event stream"].record(
                        response.status_code, time.perf_counter() - started
                    )
                    return
                first = True
                async for line in response.aiter_lines():
                    if first and line.startswith("data:"):
                        self.kinds["event stream"].record(200, time.perf_counter() - started)
                        first = False
                    if self.stopping.is_set():
                        return
        except httpx.HTTPError as exc:
            self.kinds["event stream"].record(type(exc).__name__, time.perf_counter() - started)

    async def pause(self, seconds: float) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def run(self) -> float:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            workers = [self.creator(client, key) for key in self.keys]
            workers += [self.greedy_creator(client) for _ in range(4)]
            workers += [self.poller(client) for _ in range(self.args.pollers)]
            stream_keys = self.keys[:2]
            workers += [self.stream(client, stream_keys[n % 2]) for n in range(self.args.streams)]
            running_load = [asyncio.create_task(w) for w in workers]
            started = time.perf_counter()
            await asyncio.sleep(self.args.duration)
            self.stopping.set()
            await asyncio.wait_for(asyncio.gather(*running_load), 120)
            return time.perf_counter() - started


def result_files(results_dir: Path, task_ids: list[str]) -> dict[str, list[Path]]:
    return {t: list((results_dir / t).glob("*")) for t in task_ids}


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def table(load: Load, seconds: float) -> str:
    lines = [
        "| kind | requests | per s | p50 ms | p99 ms | statuses |",
        "|---|---|---|---|---|---|",
    ]
    for name, kind in sorted(load.kinds.items()):
        lat = kind.latencies_s
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(kind.statuses.items()))
        lines.append(
            f"| {name} | {len(lat)} | {len(lat) / seconds:.1f} | {1000 * percentile(lat, 50):.0f} "
            f"| {1000 * percentile(lat, 99):.0f} | {statuses} |"
        )
    return "\n".join(lines)


async def drain_and_audit(load: Load, results_dir: Path, drain_s: float) -> list[str]:
    """Wait for every accepted task to end; returns what the audit found wrong."""
    problems: list[str] = []
    ended: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + drain_s
    async with httpx.AsyncClient(timeout=30) as client:
        while len(ended) < len(load.accepted) and time.monotonic() < deadline:
            for task_id, key in load.accepted.items():
                if task_id in ended:
                    continue
                response = await client.get(
                    f"{load.bases[0]}/v1/tasks/{task_id}",
                    headers={"Authorization": f"Bearer {key}"},
                )
                if response.status_code == 429:
                    await asyncio.sleep(1)
                    break
                body = response.json()
                if body["status"] in ("completed", "failed"):
                    ended[task_id] = body
            await asyncio.sleep(0.5)
        unended = len(load.accepted) - len(ended)
        if unended:
            problems.append(f"{unended} accepted tasks had not ended after {drain_s:g} s")
        completed_by_key: Counter[str] = Counter()
        files_of = await asyncio.to_thread(result_files, results_dir, list(ended))
        for task_id, body in ended.items():
            files = files_of[task_id]
            if body["status"] == "completed":
                completed_by_key[load.accepted[task_id]] += 1
                if not files:
                    problems.append(f"completed task {task_id} has no result file")
            elif files:
                problems.append(f"failed task {task_id} left files: {files}")
        for key in {*load.accepted.values()}:
            credits = await client.get(
                f"{load.bases[0]}/v1/credits", headers={"Authorization": f"Bearer {key}"}
            )
            used = credits.json()["data"]["user"]["used_credits"]
            expected = round(PRICE_1K * completed_by_key[key], 6)
            if abs(used - expected) > 1e-6:  # credits are whole micro-credits on the wire
                problems.append(f"key {key[:8]}...: used {used}, its completed tasks {expected}")
    failed = sum(1 for b in ended.values() if b["status"] == "failed")
    print(
        f"\naudit: {len(load.accepted)} accepted, {len(ended) - failed} completed, "
        f"{failed} failed, {len(load.accepted) - len(ended)} unended; "
        f"{'OK' if not problems else 'FAILED'}"
    )
    return problems


async def make_keys(url: str, count: int, max_concurrent: int) -> tuple[list[str], str]:
    db = Database(url)
    try:
        await upgrade(db)
        store = AccountStore(db)
        keys = []
        for n in range(count + 1):
            await store.create_account(f"load-{n}", credits_micro=to_micro(CREDITS))
            limits = (
                KeyLimits(rate_limit="60/minute")
                if n == count
                else KeyLimits(max_concurrent=max_concurrent)
            )
            _, key = await store.create_key(f"load-{n}", limits=limits)
            keys.append(key)
        return keys[:-1], keys[-1]
    finally:
        await db.dispose()


@contextmanager
def processes(args: argparse.Namespace, env: dict[str, str], workdir: Path) -> Iterator[list[str]]:
    """The topology's processes; yields the API base URLs."""
    with ExitStack() as stack:
        if args.topology == "serve":
            service = stack.enter_context(serving("serve", env, workdir / "serve.log"))
            yield [service.base_url]
            return
        bases = []
        for n in range(2):
            api = stack.enter_context(serving("api", env, workdir / f"api-{n}.log"))
            bases.append(api.base_url)
        for n in range(2):
            stack.enter_context(running(["worker"], env, workdir / f"worker-{n}.log"))
        yield bases


@asynccontextmanager
async def database(args: argparse.Namespace, workdir: Path) -> AsyncIterator[str]:
    if args.topology == "serve":
        yield f"sqlite+aiosqlite:///{workdir / 'darkroom.db'}"
        return
    async with scratch_database(args.postgres) as url:
        yield url


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", choices=["serve", "fleet"], default="serve")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--keys", type=int, default=12)
    parser.add_argument("--max-concurrent", type=int, default=4)
    parser.add_argument("--create-every", type=float, default=1.0)
    parser.add_argument("--pollers", type=int, default=8)
    parser.add_argument("--streams", type=int, default=40)
    parser.add_argument("--drain", type=float, default=600.0)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="darkroom-load-") as tmp:
        workdir = Path(tmp)
        model_dir = ensure_tiny_model(workdir / "tiny")
        async with database(args, workdir) as url:
            keys, greedy = await make_keys(url, args.keys, args.max_concurrent)
            extra = {"DARKROOM_REDIS_URL": args.redis} if args.topology == "fleet" else {}
            env = service_env(
                workdir / "data",
                url,
                model_dir,
                **extra,
                DARKROOM_REDIS_PREFIX=f"darkroom-load-{os.getpid()}",
                # The defaults a deployment gets, not the tests' shortened ones.
                DARKROOM_QUERY_RATE_LIMIT="1200/minute",
                DARKROOM_FAILED_AUTH_RATE_LIMIT="30/minute",
                DARKROOM_DEFAULT_MAX_CONCURRENT="16",
            )
            with processes(args, env, workdir) as bases:
                load = Load(bases, keys, greedy, args)
                seconds = await load.run()
                topology = (
                    "serve (SQLite, one worker)"
                    if args.topology == "serve"
                    else "2 APIs + 2 workers (PostgreSQL, Redis)"
                )
                print(f"{topology}, {seconds:.0f} s of load, tiny engine, this machine\n")
                print(table(load, seconds))
                problems = await drain_and_audit(load, workdir / "data" / "results", args.drain)
        for problem in problems:
            print("  " + problem)
        return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
