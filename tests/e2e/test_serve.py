"""`darkroom serve` end to end: a CLI key, a task through a real worker, a PNG of the exact size."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from darkroom.contract import SIZES, Quality

from .procs import create_key, create_task, free_port, pause_after_first_step, serving, wait_for


def fetch_png(url: str) -> Image.Image:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG"
    return image


def test_task_goes_pending_processing_completed(env: dict[str, str], tmp_path: Path) -> None:
    worker_metrics = free_port()
    env = env | {"DARKROOM_LOG_FORMAT": "json", "DARKROOM_WORKER_METRICS_PORT": str(worker_metrics)}
    key = create_key(env, "e2e")
    with (
        serving("serve", env, tmp_path / "serve.log") as service,
        httpx.Client(base_url=service.base_url, timeout=30) as client,
    ):
        pause = pause_after_first_step(env)  # held at its first step until a poll sees it
        created = create_task(client, key, size="3:2")
        assert created["status"] == "pending"
        assert 1 <= created["seed"] <= 1_048_576  # drawn, recorded and reported
        seen = wait_for(client, key, created["id"], release=pause)
        statuses = [s["status"] for s in seen]
        assert statuses[-1] == "completed", seen[-1]
        assert "processing" in statuses
        # Order only moves forward; progress never falls and ends at 100.
        rank = {"pending": 0, "processing": 1, "completed": 2}
        assert [rank[s] for s in statuses] == sorted(rank[s] for s in statuses)
        progress = [s["progress"] for s in seen]
        assert progress == sorted(progress) and progress[-1] == 100
        assert any(0 < p < 100 for p in progress), progress
        final = seen[-1]
        assert final["results"][0].startswith(service.base_url)
        assert fetch_png(final["results"][0]).size == (1280, 832)

        # A tampered link is refused and never reaches outside the results folder.
        url = final["results"][0]
        assert httpx.get(url.replace("signature=", "signature=0")).status_code == 403
        escape = re.sub(r"/\d+\.png\?", "/../../darkroom.db?", url)
        assert escape != url
        assert httpx.get(escape).status_code in (403, 404)

        # Nothing left in the queue, as a scraper sees it.
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert 'darkroom_tasks{model="krea-2-turbo",status="pending"} 0.0' in metrics.text
        assert 'darkroom_tasks{model="krea-2-turbo",status="processing"} 0.0' in metrics.text
        # This API's requests, by route template (never the task's id) and status.
        create = 'method="POST",route="/v1/images/generations",status="200"'
        assert f"darkroom_http_request_duration_seconds_count{{{create}}} 1.0" in metrics.text
        polls = 'method="GET",route="/v1/tasks/{task_id}",status="200"'
        assert f"darkroom_http_request_duration_seconds_count{{{polls}}} {len(seen)}.0" in (
            metrics.text
        )
        # The worker child's own: one attempt through each phase, completed.
        worker = httpx.get(f"http://127.0.0.1:{worker_metrics}/metrics").text
        for phase in ("queued", "generating", "finishing"):
            labels = f'model="krea-2-turbo",phase="{phase}"'
            assert f"darkroom_task_phase_seconds_count{{{labels}}} 1.0" in worker, worker
        labels = 'model="krea-2-turbo",outcome="completed"'
        assert f"darkroom_task_attempts_total{{{labels}}} 1.0" in worker

    assert_json_logs(service.log(), created["id"])


def assert_json_logs(log: str, task_id: str) -> None:
    """DARKROOM_LOG_FORMAT=json: every line of the API and its worker child is one JSON object,
    uvicorn's included, and the lines about a task name it."""
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert all({"timestamp", "level", "logger", "event"} <= line.keys() for line in lines)
    create = [
        line for line in lines
        if line["logger"] == "uvicorn.access" and "POST /v1/images/generations" in line["event"]
    ]  # fmt: skip
    assert len(create) == 1, lines
    assert create[0]["request_id"].startswith("req_") and create[0]["task_id"] == task_id
    generated = [line for line in lines if line["event"] == "generated"]
    assert [line["task_ids"] for line in generated] == [[task_id]]
    assert generated[0]["logger"] == "darkroom.worker"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_size_and_quality_has_the_exact_pixels(env: dict[str, str], tmp_path: Path) -> None:
    env = env | {"DARKROOM_NUM_INFERENCE_STEPS": "1"}  # the pixels do not depend on the steps
    key = create_key(env, "sizes")
    pairs = [(size, quality) for size in SIZES for quality in Quality]
    with (
        serving("serve", env, tmp_path / "serve.log") as service,
        httpx.Client(base_url=service.base_url, timeout=30) as client,
    ):
        ids = {
            create_task(client, key, size=size, quality=quality.value)["id"]: (size, quality)
            for size, quality in pairs
        }
        for task_id, (size, quality) in ids.items():
            final = wait_for(client, key, task_id, timeout=600)[-1]
            assert final["status"] == "completed", final
            assert fetch_png(final["results"][0]).size == SIZES[size][quality], (size, quality)


# `serve` is the one-machine command: its default database is SQLite, and the supervisor it
# tests does not touch the database.
@pytest.mark.slow
def test_worker_child_is_restarted_when_it_dies(env: dict[str, str], tmp_path: Path) -> None:
    import os
    import signal

    key = create_key(env, "restart")
    with (
        serving("serve", env, tmp_path / "serve.log") as service,
        httpx.Client(base_url=service.base_url, timeout=30) as client,
    ):
        deadline = time.monotonic() + 60
        while "worker ready" not in service.log():
            assert time.monotonic() < deadline, service.log()
            time.sleep(0.2)
        # Two processes share the log, so a line may run into the next: read digits only.
        found = re.search(r"worker started.*?pid=(\d+)", service.log())
        assert found is not None, service.log()
        pid = int(found.group(1))
        os.kill(pid, signal.SIGKILL)
        while service.log().count("worker started") < 2:
            assert time.monotonic() < deadline + 30, service.log()
            time.sleep(0.2)
        created = create_task(client, key)
        assert wait_for(client, key, created["id"])[-1]["status"] == "completed"
