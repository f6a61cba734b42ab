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


def test_production_refuses_the_default_signing_secret() -> None:
    with pytest.raises(ValidationError, match="SIGNING_SECRET"):
        Settings(environment="production")
    Settings(environment="production", signing_secret="s" * 32)


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
