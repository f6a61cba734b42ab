"""A fleet: two API processes and a worker that share no disk, only PostgreSQL, Redis and an S3
bucket, configured by environment alone (real processes, real HTTP, real services)."""

from __future__ import annotations

import io
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import AWS_TEST_ENV, darkroom_cmd

from .procs import create_key, create_task, free_port, running, service_env, serving, wait_for


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
