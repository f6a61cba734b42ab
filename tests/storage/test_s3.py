"""Results in an S3 bucket: an S3 server on loopback (moto's), reached by boto3 over real HTTP,
and a client fetching the presigned links the API hands out."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import ValidationError

from darkroom.api.app import create_app
from darkroom.api.services import Services
from darkroom.db.database import Database
from darkroom.engine.krea2 import EngineOptions, Krea2Engine
from darkroom.settings import Settings, parse_s3_url
from darkroom.storage.base import InvalidKey, StorageUnavailable
from darkroom.storage.factory import storage_from_settings
from darkroom.storage.s3 import S3Storage
from darkroom.tasks.model import Claim
from darkroom.worker.supervisor import EXIT_CONFIG
from tests.conftest import AWS_TEST_ENV, darkroom_cmd
from tests.e2e.procs import create_key, create_task, read_task, service_env, serving, wait_for
from tests.helpers import add_task, maintenance_for, make_account, worker_for


def storage(bucket: str, endpoint: str, prefix: str = "") -> S3Storage:
    return S3Storage.from_url(f"s3://{bucket}/{prefix}", endpoint_url=endpoint)


def listed(store: S3Storage) -> list[str]:
    found = store.client.list_objects_v2(Bucket=store.bucket).get("Contents", [])
    return sorted(item["Key"] for item in found)


def test_a_put_result_is_fetched_through_its_presigned_link(
    s3_bucket: str, s3_endpoint: str
) -> None:
    store = storage(s3_bucket, s3_endpoint)
    store.put("task-1/0.png", b"\x89PNG pixels")
    assert store.exists("task-1/0.png")
    link = store.direct_link("task-1/0.png", expires=2_000_000_000)
    assert link is not None and link.startswith(s3_endpoint)
    response = httpx.get(link)
    assert response.status_code == 200
    assert response.content == b"\x89PNG pixels"
    assert response.headers["content-type"] == "image/png"
    # Unsigned, the same object is refused: the bucket is not public.
    assert httpx.get(link.split("?")[0]).status_code == 403
    assert store.get("task-1/0.png") == b"\x89PNG pixels"  # the API's read, for b64_json
    store.delete("task-1/0.png")
    assert not store.exists("task-1/0.png")
    with pytest.raises(FileNotFoundError):
        store.get("task-1/0.png")


def test_a_staged_result_reaches_the_bucket_only_when_published(
    s3_bucket: str, s3_endpoint: str
) -> None:
    store = storage(s3_bucket, s3_endpoint, prefix="darkroom/results")
    kept = store.stage("task-2/0.png", b"passed")
    refused = store.stage("task-3/0.png", b"refused")
    assert kept.size == 6
    assert listed(store) == []  # nothing uploaded while the image is checked
    kept.publish()
    refused.discard()
    assert listed(store) == ["darkroom/results/task-2/0.png"]
    with pytest.raises(RuntimeError):
        refused.publish()
    assert store.sweep_staging(older_than_s=0) == 0


@pytest.mark.parametrize("key", ["../x.png", "/etc/passwd", "A/0.png", "", "a//b"])
def test_keys_darkroom_never_writes_are_refused(s3_bucket: str, s3_endpoint: str, key: str) -> None:
    store = storage(s3_bucket, s3_endpoint)
    with pytest.raises(InvalidKey):
        store.put(key, b"x")
    with pytest.raises(InvalidKey):
        store.stage(key, b"x")
    assert listed(store) == []


@pytest.mark.parametrize("url", ["s3://", "http://bucket/x", "bucket/x", "s3:///x"])
def test_a_storage_url_that_is_not_a_bucket_is_refused_at_start(url: str, tmp_path: Path) -> None:
    with pytest.raises((ValueError, ValidationError)):
        Settings(data_dir=tmp_path, storage_url=url)
    assert parse_s3_url("s3://b/a/b/") == ("b", "a/b/")
    assert parse_s3_url("s3://b") == ("b", "")


async def test_a_task_completes_into_the_bucket_and_its_link_serves_the_png(
    settings: Settings, db: Database, s3_bucket: str, s3_endpoint: str
) -> None:
    settings = settings.model_copy(
        update={"storage_url": f"s3://{s3_bucket}/results", "s3_endpoint_url": s3_endpoint}
    )
    store = storage_from_settings(settings)
    assert isinstance(store, S3Storage)
    ids = await make_account(db)
    task = await add_task(db, ids, size="16:9")
    engine = Krea2Engine.load(str(settings.tiny_model_path), ("krea-2-turbo",), EngineOptions())
    worker = worker_for(settings, db, engine, store, worker_id="w")
    assert await worker.run_once()
    await worker.drain()
    assert listed(store) == [f"results/{task.id}/1.png"]  # attempt 1's key
    assert not settings.results_dir.exists()  # nothing written locally

    app = create_app(settings, maintenance=False)
    transport = httpx.ASGITransport(app=app)
    accounts = app.state.services.accounts
    _, key = await accounts.create_key("acct")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        body = (
            await client.get(f"/v1/tasks/{task.id}", headers={"Authorization": f"Bearer {key}"})
        ).json()
    await app.state.services.db.dispose()
    assert body["status"] == "completed", body
    (link,) = body["results"]
    assert link.startswith(f"{s3_endpoint}/{s3_bucket}/results/{task.id}/1.png?")
    async with httpx.AsyncClient() as anyone:  # no key: the link alone is enough
        png = (await anyone.get(link)).content
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (1344, 768)


async def test_expired_results_are_deleted_from_the_bucket(
    settings: Settings, db: Database, s3_bucket: str, s3_endpoint: str
) -> None:
    settings = settings.model_copy(
        update={
            "storage_url": f"s3://{s3_bucket}",
            "s3_endpoint_url": s3_endpoint,
            "result_ttl_s": 1,
        }
    )
    services = Services.from_settings(settings)
    store = services.storage
    assert isinstance(store, S3Storage)
    ids = await make_account(db)
    task = await add_task(db, ids)
    claimed = await services.tasks.claim("w", limit=1, lease_s=60, models=["krea-2-turbo"])
    key = f"{task.id}/0.png"
    store.put(key, b"png")
    assert await services.tasks.complete(Claim(claimed[0].id, claimed[0].attempt), [key])
    await maintenance_for(services).run_once()
    assert store.exists(key)  # not yet a second old
    await asyncio.sleep(1.2)
    await maintenance_for(services).run_once()
    await services.db.dispose()
    assert not store.exists(key)
    assert listed(store) == []


def test_a_missing_bucket_is_named_before_anything_is_generated(
    s3_bucket: str, s3_endpoint: str
) -> None:
    storage(s3_bucket, s3_endpoint).verify()  # the real one answers
    with pytest.raises(StorageUnavailable, match=r"'no-such-bucket' .* does not exist"):
        storage("no-such-bucket", s3_endpoint).verify()


def test_a_bucket_url_without_the_s3_extra_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "boto3" else real(name, *a)
    )
    with pytest.raises(ValidationError, match=r"pip install 'darkroom\[s3\]'"):
        Settings(data_dir=tmp_path, storage_url="s3://bucket")


@pytest.mark.process
def test_a_worker_whose_bucket_is_missing_stops_with_the_fix(
    tmp_path: Path, s3_bucket: str, s3_endpoint: str
) -> None:
    env = service_env(
        tmp_path / "data",
        f"sqlite+aiosqlite:///{tmp_path / 'd.db'}",
        tmp_path / "unused",
        DARKROOM_STORAGE_URL="s3://no-such-bucket/results",
        DARKROOM_S3_ENDPOINT_URL=s3_endpoint,
        **AWS_TEST_ENV,
    )
    done = subprocess.run(
        [*darkroom_cmd(), "worker"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert "'no-such-bucket' of DARKROOM_STORAGE_URL does not exist" in done.stderr
    assert "worker ready" not in done.stderr


def test_links_are_signed_for_the_address_clients_reach_the_bucket_at(
    s3_bucket: str, s3_endpoint: str
) -> None:
    """The servers reach the bucket at one address (here 127.0.0.1), clients at another
    (here localhost): the link names the public one and works there."""
    public = s3_endpoint.replace("127.0.0.1", "localhost")
    assert public != s3_endpoint
    store = S3Storage.from_url(
        f"s3://{s3_bucket}/", endpoint_url=s3_endpoint, public_endpoint_url=public
    )
    store.put("task-2/1.png", b"\x89PNG public")
    link = store.direct_link("task-2/1.png", expires=2_000_000_000)
    assert link is not None and link.startswith(public)
    response = httpx.get(link)
    assert response.status_code == 200 and response.content == b"\x89PNG public"


@pytest.mark.slow
def test_an_s3_outage_costs_no_attempt_and_the_worker_is_not_ready_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real `darkroom serve` against an S3 server of the test's own, stopped while a task is
    generated: the task goes back to the queue with its attempt given back, the worker reports
    not ready and claims nothing, and once S3 answers again the task completes on attempt 1."""
    import socket
    import time

    import boto3
    from moto.server import ThreadedMotoServer

    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3.start()
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="outage")
    ready = tmp_path / "worker-ready"
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'd.db'}"
    env = service_env(
        tmp_path / "data",
        database_url,
        tmp_path / "tiny",
        DARKROOM_STORAGE_URL="s3://outage/results",
        DARKROOM_S3_ENDPOINT_URL=endpoint,
        DARKROOM_WORKER_READY_FILE=str(ready),
        **AWS_TEST_ENV,
    )
    key = create_key(env, "outage")

    def until(condition: Any, what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, what
            time.sleep(0.1)

    try:
        with (
            serving("serve", env, tmp_path / "serve.log") as service,
            httpx.Client(base_url=service.base_url, timeout=30) as client,
        ):
            until(ready.exists, "the worker never became ready")
            s3.stop()
            task_id = create_task(client, key)["id"]
            until(lambda: not ready.exists(), "the worker still says it is ready")
            released = read_task(database_url, task_id)
            assert (released.status.value, released.attempt) == ("pending", 0), released
            time.sleep(2)  # claims nothing meanwhile: still pending, no attempt spent
            assert read_task(database_url, task_id).attempt == 0
            s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            s3.start()
            [*_, final] = wait_for(client, key, task_id)
            assert final["status"] == "completed", final
            assert read_task(database_url, task_id).attempt == 1
            until(ready.exists, "the worker did not say it is ready again")
    finally:
        s3.stop()
