"""`GET /metrics`: the queue read from the task table, in Prometheus's text format."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from darkroom.api.app import create_app
from darkroom.db.database import Database
from darkroom.settings import Settings
from darkroom.tasks.store import TaskStore


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def create(client: httpx.AsyncClient, auth: dict[str, str], **body: object) -> str:
    response = await client.post(
        "/v1/images/generations",
        json={"model": "krea-2-turbo", "prompt": "a lighthouse", "size": "1:1", **body},
        headers=auth,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


async def test_metrics_count_the_queue_by_model_and_status(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database
) -> None:
    empty = await client.get("/metrics")
    assert empty.status_code == 200
    assert empty.headers["content-type"].startswith("text/plain")
    before = samples(empty.text)
    model = (("model", "krea-2-turbo"),)
    assert before[("darkroom_tasks", (*model, ("status", "pending")))] == 0
    assert before[("darkroom_oldest_pending_seconds", model)] == 0
    assert before[("darkroom_busy_workers", model)] == 0

    for _ in range(3):
        await create(client, auth, callback_url="https://hooks.example.com/done")
    claimed = await TaskStore(db).claim("w1", limit=1, lease_s=60, models=["krea-2-turbo"])
    assert len(claimed) == 1
    await TaskStore(db).cancel(claimed[0].id)  # ends it: its callback is queued

    after = samples((await client.get("/metrics")).text)
    assert after[("darkroom_tasks", (*model, ("status", "pending")))] == 2
    assert after[("darkroom_tasks", (*model, ("status", "processing")))] == 0
    assert after[("darkroom_oldest_pending_seconds", model)] > 0
    assert after[("darkroom_callbacks_pending", ())] == 1

    await TaskStore(db).claim("w2", limit=1, lease_s=60, models=["krea-2-turbo"])
    busy = samples((await client.get("/metrics")).text)
    assert busy[("darkroom_tasks", (*model, ("status", "pending")))] == 1
    assert busy[("darkroom_tasks", (*model, ("status", "processing")))] == 1
    assert busy[("darkroom_busy_workers", model)] == 1


async def test_metrics_can_be_switched_off(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"metrics": False}), maintenance=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/metrics")
    await app.state.services.db.dispose()
    assert response.status_code == 404
