"""Fixtures of the end-to-end tests: the environment of real darkroom processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from .procs import service_env


@pytest.fixture
def env(tmp_path: Path, database_url: str, tiny_model_dir: Path) -> dict[str, str]:
    """The environment of darkroom processes on this test's database and data folder."""
    return service_env(tmp_path / "data", database_url, tiny_model_dir)
