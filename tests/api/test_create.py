"""A valid create returns the task as created, exactly in the contract's shape."""

from __future__ import annotations

import re

import httpx
import pytest

from darkroom.contract import SIZES, Quality
from darkroom.db.database import Database
from darkroom.tasks.store import TaskStore

URL = "/v1/images/generations"


async def test_create_returns_the_contract_body(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await client.post(
        URL, json={"model": "krea-2-turbo", "prompt": "a fox"}, headers=auth
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {
        "created", "id", "model", "object", "progress", "seed", "status", "task_info", "type", "usage",
    }  # fmt: skip
    assert re.fullmatch(rf"task-unified-{body['created']}-[a-z0-9]{{8}}", body["id"])
    assert body["model"] == "krea-2-turbo"
    assert body["object"] == "image.generation.task"
    assert body["progress"] == 0
    assert body["status"] == "pending"
    assert body["type"] == "image"
    assert body["task_info"]["can_cancel"] is False
    assert isinstance(body["task_info"]["estimated_time"], int)
    assert body["task_info"]["estimated_time"] >= 1
    assert body["usage"] == {
        "billing_rule": "per_call",
        "credits_reserved": 0.45,
        "user_group": "default",
    }


@pytest.mark.parametrize(
    ("extra", "size", "quality", "pixels", "price"),
    [
        ({}, "1:1", Quality.K1, (1024, 1024), 0.45),
        ({"quality": "2K"}, "1:1", Quality.K2, (2048, 2048), 1.8),
        ({"size": "16:9"}, "16:9", Quality.K1, (1344, 768), 0.45),
        ({"size": "2:1", "quality": "2K"}, "2:1", Quality.K2, (2816, 1408), 1.8),
        ({"size": None, "quality": None, "seed": None}, "1:1", Quality.K1, (1024, 1024), 0.45),
    ],
)
async def test_defaults_and_sizes_are_stored(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    db: Database,
    extra: dict[str, object],
    size: str,
    quality: Quality,
    pixels: tuple[int, int],
    price: float,
) -> None:
    body = {"model": "krea-2-turbo", "prompt": "p", **extra}
    response = await client.post(URL, json=body, headers=auth)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["credits_reserved"] == price
    task = await TaskStore(db).get(response.json()["id"])
    assert task is not None
    assert (task.size, task.quality, (task.width, task.height)) == (size, quality, pixels)
    assert 1 <= task.seed <= 1_048_576


async def test_explicit_seed_is_kept_and_zero_draws_one(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database
) -> None:
    store = TaskStore(db)
    kept = await client.post(
        URL, json={"model": "krea-2-turbo", "prompt": "p", "seed": 1234}, headers=auth
    )
    task = await store.get(kept.json()["id"])
    assert task is not None and task.seed == 1234
    assert kept.json()["seed"] == 1234
    drawn = {
        (
            await store.get(
                (
                    await client.post(
                        URL, json={"model": "krea-2-turbo", "prompt": "p", "seed": 0}, headers=auth
                    )
                ).json()["id"]
            )
        ).seed  # type: ignore[union-attr]
        for _ in range(5)
    }
    assert 0 not in drawn and len(drawn) > 1


def test_size_table_is_the_published_one() -> None:
    assert len(SIZES) == 11
    pairs = [(s, q) for s in SIZES for q in Quality]
    assert len(pairs) == 22
    for size, by_quality in SIZES.items():
        for quality, (w, h) in by_quality.items():
            assert w % 16 == 0 and h % 16 == 0, (size, quality)
            rw, rh = (int(x) for x in size.split(":"))
            assert abs(w / h - rw / rh) < 0.13, (size, quality)
    assert SIZES["5:4"][Quality.K1] == SIZES["4:3"][Quality.K1] == (1152, 896)
