"""A fleet: two API processes and a worker that share no disk, only PostgreSQL, Redis and an S3
bucket, configured by environment alone (real processes, real HTTP, real services)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sqlalchemy import func, select
from standardwebhooks import Webhook

from darkroom.accounts.store import AccountStore
from darkroom.billing.money import to_micro
from darkroom.db.database import Database
from darkroom.db.schema import tasks
from darkroom.storage.s3 import S3Storage
from darkroom.tasks.workers import WorkerRegistry
from tests.callbacks.receiver import https_receiver
from tests.conftest import AWS_TEST_ENV, darkroom_cmd, on_database

from .procs import (
    cli,
    create_key,
    create_task,
    free_port,
    read_task,
    running,
    service_env,
    serving,
    wait_for,
)


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_task_crosses_a_fleet_that_shares_no_disk(
    tmp_path: Path,
    database_url: str,
    tiny_model_dir: Path,
    redis_server: str,
    s3_endpoint: str,
    s3_bucket: str,
) -> None:
    shared = {
        "DARKROOM_REDIS_URL": redis_server,
        "DARKROOM_REDIS_PREFIX": f"test-{uuid.uuid4().hex}",
        "DARKROOM_STORAGE_URL": f"s3://{s3_bucket}/fleet",
        "DARKROOM_S3_ENDPOINT_URL": s3_endpoint,
        # One link-signing secret for every API process, as a fleet must pass it.
        "DARKROOM_SIGNING_SECRET": uuid.uuid4().hex * 2,
        **AWS_TEST_ENV,
    }
    # Each process has its own data folder, as separate machines would.
    env = {
        name: service_env(tmp_path / name, database_url, tiny_model_dir, **shared)
        for name in ("api-a", "api-b", "worker")
    }
    key = create_key(env["api-a"], "fleet")
    with (
        serving("api", env["api-a"], tmp_path / "api-a.log") as a,
        serving("api", env["api-b"], tmp_path / "api-b.log") as b,
        running(["worker"], env["worker"], tmp_path / "worker.log"),
        httpx.Client(base_url=a.base_url, timeout=30) as client_a,
        httpx.Client(base_url=b.base_url, timeout=30) as client_b,
    ):
        created = create_task(client_a, key, size="4:3")
        final = wait_for(client_b, key, created["id"], timeout=300)[-1]
        assert final["status"] == "completed", final
        (link,) = final["results"]
        assert link.startswith(f"{s3_endpoint}/{s3_bucket}/fleet/{created['id']}/1.png?")
        with Image.open(io.BytesIO(httpx.get(link, timeout=30).content)) as image:
            assert image.format == "PNG" and image.size == (1152, 896)
        metrics = client_b.get("/metrics").text
        assert 'darkroom_tasks{model="krea-2-turbo",status="pending"} 0.0' in metrics
    for name in env:  # the PNG is in the bucket only
        assert not list((tmp_path / name).glob("**/*.png"))
    # An API process with a secret of its own would sign links the others refuse: it won't start.
    stray = {**env["api-a"], "DARKROOM_SIGNING_SECRET": uuid.uuid4().hex * 2}
    refused = subprocess.run(
        [*darkroom_cmd(), "api", "--port", str(free_port())],
        env=stray, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "same DARKROOM_SIGNING_SECRET" in refused.stdout + refused.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_the_compose_topology_loses_nothing_when_processes_die(
    tmp_path: Path,
    database_url: str,
    tiny_model_dir: Path,
    redis_server: str,
    s3_endpoint: str,
    s3_bucket: str,
) -> None:
    """deploy/compose.yaml's topology on loopback: two `darkroom api`, three `darkroom worker`,
    PostgreSQL, Redis, an S3 server. 200 tasks with callbacks; two workers and one API process
    SIGKILLed mid-run and restarted. Every task completes once, is charged once, calls back,
    and has its result in the bucket; the dead workers show as gone."""
    shared = {
        "DARKROOM_REDIS_URL": redis_server,
        "DARKROOM_REDIS_PREFIX": f"test-{uuid.uuid4().hex}",
        "DARKROOM_STORAGE_URL": f"s3://{s3_bucket}/chaos",
        "DARKROOM_S3_ENDPOINT_URL": s3_endpoint,
        "DARKROOM_SIGNING_SECRET": uuid.uuid4().hex * 2,
        "DARKROOM_NUM_INFERENCE_STEPS": "2",
        "DARKROOM_WORKER_BATCH_SIZE": "4",
        "DARKROOM_MAX_ATTEMPTS": "5",
        "DARKROOM_CALLBACK_ALLOW_PRIVATE": "true",
        "DARKROOM_CALLBACK_POLL_INTERVAL_S": "0.1",
        "DARKROOM_DEFAULT_RATE_LIMIT": "100000/minute",
        **AWS_TEST_ENV,
    }
    # 200 in the acceptance run (DARKROOM_TEST_CHAOS_TASKS=200, about 5 minutes here); the
    # suite's default keeps its 15-minute budget with the same kills, in the same proportions.
    total = int(os.environ.get("DARKROOM_TEST_CHAOS_TASKS", "32"))
    with https_receiver(tmp_path, [200]) as receiver:
        shared["DARKROOM_CALLBACK_CA_FILE"] = str(receiver.ca_file)
        env = {
            name: service_env(tmp_path / name, database_url, tiny_model_dir, **shared)
            for name in ("api-a", "api-b", "worker-1", "worker-2", "worker-3", "cli")
        }
        key = create_key(env["cli"], "chaos")
        secret = cli(env["cli"], "accounts", "webhook-secret", "chaos").stdout.split()[-1]
        before = account_used(database_url, "chaos")
        port_b = free_port()
        with ExitStack() as stack:
            a = stack.enter_context(serving("api", env["api-a"], tmp_path / "api-a.log"))
            b_log = tmp_path / "api-b.log"
            b = stack.enter_context(serving("api", env["api-b"], b_log, port=port_b))
            workers = {
                n: stack.enter_context(
                    running(["worker"], env[f"worker-{n}"], tmp_path / f"worker-{n}.log")
                )
                for n in (1, 2, 3)
            }
            killed_pids: list[int] = []
            last_kill = time.monotonic()
            ids: list[str] = []
            with httpx.Client(timeout=30) as client:
                for n in range(total):
                    base = (a if n % 2 else b).base_url
                    ids.append(
                        create_resilient(client, base, key, n, receiver.url("127.0.0.1", f"/t{n}"))
                    )
                    if n == total // 5:  # a worker dies mid-run, and comes back
                        killed_pids.append(kill(workers[1], database_url))
                        workers[1] = stack.enter_context(
                            running(["worker"], env["worker-1"], tmp_path / "worker-1b.log")
                        )
                    if n == 2 * total // 5:  # an API process dies; its creates are retried
                        b.process.send_signal(signal.SIGKILL)
                        b.process.wait()
                        b = stack.enter_context(
                            serving("api", env["api-b"], tmp_path / "api-b2.log", port=port_b)
                        )
                    if n == 3 * total // 5:
                        killed_pids.append(kill(workers[2], database_url))
                        workers[2] = stack.enter_context(
                            running(["worker"], env["worker-2"], tmp_path / "worker-2b.log")
                        )
                        last_kill = time.monotonic()
            with httpx.Client(base_url=a.base_url, timeout=30) as client:
                finals = [wait_for(client, key, i, timeout=600, poll_s=0.2)[-1] for i in ids]
            got = receiver.wait_for(total, timeout_s=120)
            time.sleep(1.0)  # a duplicate would show up now
            time.sleep(max(0.0, last_kill + 5 - time.monotonic()))  # past their lease (4 s)
            workers_table = cli(env["cli"], "workers", "--all").stdout
            registry = on_database(database_url, lambda db: WorkerRegistry(db).all())

    # 0 lost, none twice: exactly one task per create, all completed.
    assert len(set(ids)) == total
    assert [f["status"] for f in finals] == ["completed"] * total, [
        (f["id"], f.get("error")) for f in finals if f["status"] != "completed"
    ]
    assert task_count_of(database_url, "chaos") == total
    # 0 charged twice: the account paid exactly 200 prices.
    assert account_used(database_url, "chaos") - before == total * to_micro(0.45)
    # Every callback delivered, once, signed.
    assert receiver.count() == total
    by_path = {r.path: r for r in got}
    assert sorted(by_path) == sorted(f"/t{n}" for n in range(total))
    for n, task_id in enumerate(ids):
        body = Webhook(secret).verify(by_path[f"/t{n}"].body, by_path[f"/t{n}"].headers)
        assert body["id"] == task_id and body["status"] == "completed"
    # Every result in the bucket.
    store = S3Storage.from_url(f"s3://{s3_bucket}/chaos", endpoint_url=s3_endpoint)
    for task_id in ids:
        task = read_task(database_url, task_id)
        assert task.result_keys and all(store.exists(k) for k in task.result_keys)
    # The dead workers are shown as gone (their rows were never marked stopped: they died).
    dead = [w for w in registry if int(w.id.split(":")[1]) in killed_pids]
    assert len(dead) == len(killed_pids) and all(w.state != "stopped" for w in dead)
    assert workers_table.count("(gone)") == len(killed_pids), workers_table
    for worker in dead:
        assert worker.id[:12] in workers_table


def create_resilient(client: httpx.Client, base: str, key: str, n: int, callback: str) -> str:
    """A create as a careful client sends it: an Idempotency-Key, retried while the API
    process is down (its restart, or a dropped answer), never twice charged."""
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": f"chaos-{n}"}
    body = {"model": "krea-2-turbo", "prompt": f"a lighthouse, take {n}", "callback_url": callback}
    deadline = time.monotonic() + 120
    while True:
        try:
            response = client.post(f"{base}/v1/images/generations", json=body, headers=headers)
            if response.status_code == 200:
                task_id: str = response.json()["id"]
                return task_id
            assert response.status_code in (429, 503), response.text
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"create {n} kept failing"
        time.sleep(0.2)


def kill(worker: subprocess.Popen[str], database_url: str) -> int:
    """SIGKILL a worker once it has registered (so it has a row to be seen gone by)."""
    deadline = time.monotonic() + 120
    while not any(
        int(w.id.split(":")[1]) == worker.pid
        for w in on_database(database_url, lambda db: WorkerRegistry(db).all())
    ):
        assert time.monotonic() < deadline, "the worker never registered"
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    return worker.pid


def account_used(database_url: str, name: str) -> int:
    async def used(db: Database) -> int:
        account = await AccountStore(db).get_account(name)
        assert account is not None
        return account.used_micro

    return on_database(database_url, used)


def task_count_of(database_url: str, name: str) -> int:
    async def count(db: Database) -> int:
        account = await AccountStore(db).get_account(name)
        assert account is not None
        query = select(func.count()).select_from(tasks).where(tasks.c.account_id == account.id)
        async with db.transaction() as conn:
            return int((await conn.execute(query)).scalar_one())

    return on_database(database_url, count)
