"""Settings: validated at start, every field documented."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from darkroom.settings import Settings, configuration_markdown

DOCS = Path(__file__).parents[1] / "docs" / "configuration.md"


def test_every_setting_is_documented() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description"
    assert DOCS.read_text() == configuration_markdown(), (
        "docs/configuration.md is stale: python -m darkroom.settings > docs/configuration.md"
    )


def test_production_needs_a_signing_secret_of_its_own() -> None:
    with pytest.raises(ValidationError, match="SIGNING_SECRET must be set in production"):
        Settings(environment="production")
    Settings(environment="production", signing_secret="s" * 32)


@pytest.mark.parametrize(
    ("secret", "reason"),
    [("dev-insecure-signing-secret", "published"), ("short", "at least 32 characters")],
)
def test_a_published_or_short_signing_secret_is_refused_everywhere(
    secret: str, reason: str
) -> None:
    for environment in ("development", "production"):
        with pytest.raises(ValidationError, match=reason):
            Settings(environment=environment, signing_secret=secret)  # type: ignore[arg-type]


@pytest.mark.parametrize("price", [-0.45, float("nan"), float("inf")])
def test_a_price_that_is_not_a_number_of_credits_is_refused_at_start(price: float) -> None:
    with pytest.raises(ValidationError, match=r"1K price of krea-2-turbo must be .* 0 or more"):
        Settings(prices={"krea-2-turbo": {"1K": price, "2K": 1.8}})
    Settings(prices={"krea-2-turbo": {"1K": 0, "2K": 1.8}})  # free is a price


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKROOM_ENGINE", "tiny")
    monkeypatch.setenv("DARKROOM_LEASE_S", "12")
    settings = Settings()
    assert settings.engine == "tiny"
    assert settings.lease_s == 12.0
    monkeypatch.setenv("DARKROOM_ENGINE", "bogus")
    with pytest.raises(ValidationError):
        Settings()


def test_heartbeat_must_beat_within_the_lease() -> None:
    with pytest.raises(ValidationError, match="HEARTBEAT"):
        Settings(lease_s=5, heartbeat_s=5)


@pytest.mark.parametrize(
    ("given", "used"),
    [
        (
            "postgres://u:p%40ss@db.example:5433/dr?sslmode=require",
            "postgresql+asyncpg://u:p%40ss@db.example:5433/dr?ssl=require",
        ),
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        (
            "postgresql+asyncpg://u@h/db?ssl=verify-full",
            "postgresql+asyncpg://u@h/db?ssl=verify-full",
        ),
        ("sqlite:////srv/darkroom/d.db", "sqlite+aiosqlite:////srv/darkroom/d.db"),
        ("sqlite+pysqlite:////srv/d.db", "sqlite+aiosqlite:////srv/d.db"),
        ("sqlite+aiosqlite:////srv/d.db", "sqlite+aiosqlite:////srv/d.db"),
    ],
)
def test_database_urls_as_providers_give_them_run_on_the_async_drivers(
    given: str, used: str
) -> None:
    assert Settings(database_url=given).resolved_database_url == used


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("mysql://u@h/db", "SQLite or PostgreSQL"),
        ("postgresql+psycopg2://u@h/db", "runs postgresql through postgresql.asyncpg"),
        ("postgresql+pysqlite://u@h/db", "runs postgresql through postgresql.asyncpg"),
        ("not a url", "not a database URL"),
    ],
)
def test_other_databases_and_drivers_are_refused_at_start(given: str, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        Settings(database_url=given)


def test_fp8_storage_with_compile_is_refused_at_start_with_the_reason() -> None:
    with pytest.raises(ValidationError, match="layerwise casting"):
        Settings(fp8="storage", compile=True)
    with pytest.raises(ValidationError, match="krea-2-turbo-fp8: fp8 `storage` cannot"):
        Settings(
            compile=True,
            models={"krea-2-turbo": {}, "krea-2-turbo-fp8": {"fp8": "storage"}},
            prices={m: {"1K": 1, "2K": 2} for m in ("krea-2-turbo", "krea-2-turbo-fp8")},
        )
    Settings(fp8="torchao", compile=True)
    Settings(fp8="storage", models={"krea-2-turbo": {"fp8": "storage", "compile": False}})
