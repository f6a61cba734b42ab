"""The model registry: public names map to engine configurations an operator writes as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from darkroom.engine.base import Batch, Job, ModelUnavailable
from darkroom.engine.factory import engine_options, load_engine
from darkroom.engine.krea2 import EngineOptions, load_pipeline
from darkroom.settings import ModelConfig, Settings
from tests.conftest import make_settings

TWO_MODELS = {
    "krea-2-turbo": {},
    "krea-2-turbo-draft": {"steps": 2, "fp8": "storage", "vae_tiling": True},
}
PRICES = {"krea-2-turbo": {"1K": 0.45, "2K": 1.8}, "krea-2-turbo-draft": {"1K": 0.1, "2K": 0.4}}


def test_registry_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKROOM_MODELS", json.dumps(TWO_MODELS))
    monkeypatch.setenv("DARKROOM_PRICES", json.dumps(PRICES))
    monkeypatch.setenv("DARKROOM_WORKER_MODEL", "krea-2-turbo-draft")
    settings = Settings()
    assert list(settings.models) == ["krea-2-turbo", "krea-2-turbo-draft"]
    assert settings.models["krea-2-turbo-draft"] == ModelConfig(
        steps=2, fp8="storage", vae_tiling=True
    )
    assert settings.served_model == "krea-2-turbo-draft"
    # A JSON list of names is short for default configurations.
    monkeypatch.setenv("DARKROOM_MODELS", '["krea-2-turbo"]')
    monkeypatch.delenv("DARKROOM_WORKER_MODEL")
    assert Settings().models == {"krea-2-turbo": ModelConfig()}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"models": {"other": {}}}, "no prices for other"),
        ({"models": {}}, "at least one model"),
        ({"worker_model": "nope"}, "not in DARKROOM_MODELS"),
        ({"models": {"krea-2-turbo": {"stepz": 3}}}, "stepz"),
        ({"models": {"krea-2-turbo": {"steps": 0}}}, "steps"),
    ],
)
def test_bad_registries_are_refused_at_start(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**changes)  # type: ignore[arg-type]


def test_unset_fields_take_the_global_settings() -> None:
    # The draft's fp8 is torchao here: fp8 storage with compile is refused at start.
    draft_config = {**TWO_MODELS["krea-2-turbo-draft"], "fp8": "torchao"}
    settings = Settings(
        models={**TWO_MODELS, "krea-2-turbo-draft": draft_config},  # type: ignore[dict-item]
        prices=PRICES,
        num_inference_steps=8,
        attention_backend="_native_cudnn",
        compile=True,
    )
    full = engine_options(settings, "krea-2-turbo")
    assert (full.num_inference_steps, full.fp8, full.vae_tiling) == (8, "off", False)
    assert (full.attention_backend, full.compile_blocks, full.guidance_scale) == (
        "_native_cudnn",
        True,
        0.0,
    )
    draft = engine_options(settings, "krea-2-turbo-draft")
    assert (draft.num_inference_steps, draft.fp8, draft.vae_tiling) == (2, "torchao", True)
    assert draft.compile_blocks is True  # not overridden


def test_a_worker_serves_its_registry_entry(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = make_settings(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path / 'x.db'}",
        tiny_model_path=tiny_model_dir,
        models={"krea-2-turbo": {}, "krea-2-turbo-draft": {"steps": 2}},
        prices=PRICES,
        worker_model="krea-2-turbo-draft",
    )
    engine = load_engine(settings)
    assert engine.models == ("krea-2-turbo-draft",)  # it claims this model's tasks only
    steps: list[tuple[int, int]] = []
    engine.generate(
        Batch("krea-2-turbo-draft", 256, 256, (Job("t", "a fox", 3),)),
        lambda done, total: steps.append((done, total)),
    )
    assert steps == [(1, 2), (2, 2)]


async def test_the_api_takes_every_registered_model(
    tmp_path: Path, database_url: str, tiny_model_dir: Path
) -> None:
    from darkroom.accounts.store import AccountStore
    from darkroom.api.app import create_app
    from darkroom.db.database import Database
    from darkroom.db.migrate import upgrade

    settings = make_settings(
        tmp_path, database_url, tiny_model_path=tiny_model_dir, models=TWO_MODELS, prices=PRICES
    )
    db = Database(settings.resolved_database_url)
    await upgrade(db)
    store = AccountStore(db)
    await store.create_account("a", credits_micro=10**7)
    _, key = await store.create_key("a")
    await db.dispose()
    app = create_app(settings, maintenance=False)
    auth = {"Authorization": f"Bearer {key}"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        for model, price in (("krea-2-turbo-draft", 0.1), ("krea-2-turbo", 0.45)):
            made = await client.post(
                "/v1/images/generations", json={"model": model, "prompt": "p"}, headers=auth
            )
            assert made.status_code == 200, made.text
            assert made.json()["model"] == model
            assert made.json()["usage"]["credits_reserved"] == price
        unknown = await client.post(
            "/v1/images/generations", json={"model": "krea-3", "prompt": "p"}, headers=auth
        )
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "model"


def test_offload_needs_cuda_and_says_so(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelUnavailable, match="OFFLOAD=model needs a CUDA device"):
        load_pipeline(str(tiny_model_dir), EngineOptions(device="cpu", offload="model"))
