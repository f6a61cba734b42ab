"""What the API process spends per request: CPU milliseconds of a lone `darkroom api`, from /proc.

Starts `darkroom api` on a fresh SQLite file (no worker: tasks stay pending), then sends each kind
of request many times over real HTTP on loopback and divides the process's CPU time (user and
system, all its threads) by the count. `/healthz`, which touches no database, is the baseline in
the same run: what the HTTP stack alone costs. Linux only (/proc).

    python bench/api_requests.py --repeat 400
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.procs import create_key, create_task, service_env, serving

from bench.service_overhead import TEST_TIMINGS
from darkroom.engine.tiny import ensure_tiny_model


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid` (all threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_request(pid: int, send: Callable[[], object], repeat: int) -> tuple[float, float]:
    """CPU ms of the API process and wall ms, per request."""
    time.sleep(0.5)  # let timers and logging from before settle
    cpu, wall = cpu_seconds(pid), time.perf_counter()
    for _ in range(repeat):
        send()
    wall = time.perf_counter() - wall
    time.sleep(0.3)  # the last responses' logging
    return 1000 * (cpu_seconds(pid) - cpu) / repeat, 1000 * wall / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="darkroom-bench-") as tmp:
        workdir = Path(tmp)
        # No engine runs here, but the API counts prompt tokens with the model's tokenizer.
        model_dir = ensure_tiny_model(workdir / "tiny")
        env = service_env(workdir / "data", f"sqlite+aiosqlite:///{workdir}/api.db", model_dir)
        for name in TEST_TIMINGS:  # the defaults a deployment gets
            env.pop(name)
        env["DARKROOM_DEFAULT_RATE_LIMIT"] = "1000000/minute"
        subprocess.run(
            [sys.executable, "-m", "darkroom", "migrate"], env=env, check=True, capture_output=True
        )
        key = create_key(env, "bench")
        auth = {"Authorization": f"Bearer {key}"}
        with (
            serving("api", env, workdir / "api.log") as api,
            httpx.Client(base_url=api.base_url, timeout=30) as client,
        ):
            pending = create_task(client, key)["id"]
            kinds: dict[str, Callable[[], object]] = {
                "GET /healthz (baseline)": lambda: client.get("/healthz"),
                "POST /v1/images/generations": lambda: create_task(client, key),
                "GET /v1/tasks/{id}, pending": lambda: client.get(
                    f"/v1/tasks/{pending}", headers=auth
                ),
            }
            for send in kinds.values():  # warm every path once
                send()
            results = {
                name: per_request(api.process.pid, send, args.repeat)
                for name, send in kinds.items()
            }
    base_cpu = results["GET /healthz (baseline)"][0]
    print(f"lone `darkroom api` on SQLite, {args.repeat} requests each over loopback HTTP")
    print(f"{'request':32} {'CPU ms':>8} {'wall ms':>8} {'CPU / baseline':>15}")
    for name, (cpu, wall) in results.items():
        print(f"{name:32} {cpu:8.2f} {wall:8.2f} {cpu / base_cpu:15.1f}")


if __name__ == "__main__":
    main()
