"""Readiness beside liveness, and a bounded queue: a full model answers 503 with Retry-After."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from darkroom.api.app import create_app
from darkroom.db.database import Database
from darkroom.settings import Settings
from darkroom.tasks.workers import WorkerRegistry
from darkroom.testing import FakeClock
from tests.conftest import make_settings
from tests.helpers import assert_error, balance, funded_key, task_count

URL = "/v1/images/generations"
BODY = {"model": "krea-2-turbo", "prompt": "a lighthouse"}


async def _client(
    settings: Settings, clock: FakeClock | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, maintenance=False, clock=clock)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c
    await app.state.services.db.dispose()


async def test_ready_only_on_a_current_schema(
    client: httpx.AsyncClient, tmp_path: Path, tiny_model_dir: Path
) -> None:
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    assert (await client.get("/healthz")).status_code == 200
    blank = make_settings(
        tmp_path / "blank", f"sqlite+aiosqlite:///{tmp_path / 'blank.db'}",
        tiny_model_path=tiny_model_dir,
    )  # fmt: skip
    async for unmigrated in _client(blank):
        answer = await unmigrated.get("/readyz")
        assert_error(answer, 503, "service_unavailable", "api_error", None)
        assert "darkroom migrate" in answer.json()["error"]["message"]
        assert answer.headers["retry-after"] == "30"
        assert (await unmigrated.get("/healthz")).status_code == 200  # alive, not ready
    closed = make_settings(
        tmp_path / "gone", "postgresql://postgres@127.0.0.1:1/none", tiny_model_path=tiny_model_dir
    )
    async for unreachable in _client(closed):
        answer = await unreachable.get("/readyz")
        assert_error(answer, 503, "service_unavailable", "api_error", None)
        assert answer.json()["error"]["message"] == "The database does not answer"


async def test_a_migration_of_the_next_release_leaves_this_one_ready(
    client: httpx.AsyncClient, db: Database
) -> None:
    from sqlalchemy import text

    from darkroom.db.migrate import head_revision

    ahead = f"{int(head_revision() or 0) + 1:04d}"
    async with db.transaction() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": ahead})
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    async with db.transaction() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '0008'"))
    behind = await client.get("/readyz")
    assert_error(behind, 503, "service_unavailable", "api_error", None)


async def test_a_model_at_its_queue_bound_answers_503_and_charges_nothing(
    settings: Settings, db: Database
) -> None:
    bounded = settings.model_copy(update={"max_queued_per_model": 2})
    async for client in _client(bounded):
        auth, _ = await funded_key(db, "busy", 10)
        for _ in range(2):
            assert (await client.post(URL, json=BODY, headers=auth)).status_code == 200
        before = await balance(db, "busy")
        full = await client.post(URL, json=BODY, headers=auth)
        assert_error(full, 503, "service_unavailable", "api_error", None)
        assert int(full.headers["retry-after"]) >= 1
        assert await task_count(db) == 2
        assert await balance(db, "busy") == before


async def test_a_model_without_a_live_worker_for_too_long_answers_503(
    settings: Settings, db: Database
) -> None:
    strict = settings.model_copy(update={"refuse_unserved_after_s": 30, "lease_s": 60})
    clock = FakeClock()
    async for client in _client(strict, clock):
        auth, _ = await funded_key(db, "early", 10)
        assert (await client.post(URL, json=BODY, headers=auth)).status_code == 200
        clock.advance(89)  # no worker since the API started, but within lease plus the bound
        assert (await client.post(URL, json=BODY, headers=auth)).status_code == 200
        clock.advance(2)
        refused = await client.post(URL, json=BODY, headers=auth)
        assert_error(refused, 503, "service_unavailable", "api_error", None)
        assert "No worker has served krea-2-turbo" in refused.json()["error"]["message"]
        assert refused.headers["retry-after"] == "30"
        await WorkerRegistry(db, clock).register("w", device="cuda:0", model="krea-2-turbo")
        assert (await client.post(URL, json=BODY, headers=auth)).status_code == 200
        assert await task_count(db) == 3
