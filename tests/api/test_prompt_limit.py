"""The 640-token prompt limit at submit, counted with the model's own tokenizer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from darkroom.api.app import create_app
from darkroom.db.database import Database
from darkroom.engine.tokens import TokenizerMissing, load_token_counters
from darkroom.settings import Settings
from tests.helpers import assert_error, task_count

URL = "/v1/images/generations"


async def test_640_tokens_pass_and_641_are_refused(
    client: httpx.AsyncClient, auth: dict[str, str], db: Database
) -> None:
    ok = await client.post(URL, json={"model": "krea-2-turbo", "prompt": "Z" * 640}, headers=auth)
    assert ok.status_code == 200, ok.text
    refused = await client.post(
        URL, json={"model": "krea-2-turbo", "prompt": "Z" * 641}, headers=auth
    )
    assert_error(refused, 400, "invalid_request", "invalid_request_error", "prompt")
    assert "641 tokens" in refused.json()["error"]["message"]
    assert await task_count(db) == 1


async def test_limit_counts_tokens_not_characters(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    # Common words merge into single tokens: far more than 640 characters, under 640 tokens.
    prompt = "a cat sitting on a wooden chair next to a window with plants " * 20
    assert len(prompt) > 640
    ok = await client.post(URL, json={"model": "krea-2-turbo", "prompt": prompt}, headers=auth)
    assert ok.status_code == 200, ok.text


def test_an_api_that_cannot_count_tokens_refuses_to_start(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API-only install without `tokenizers` would queue and reserve over-long prompts:
    it refuses to start instead, naming what to install."""
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # `import tokenizers` fails
    with pytest.raises(TokenizerMissing, match=r"darkroom\[api\]"):
        load_token_counters(settings)
    with pytest.raises(TokenizerMissing):
        create_app(settings)


@pytest.mark.process
def test_the_api_counts_tokens_without_importing_torch(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The API reads the tiny model's tokenizer with `tokenizers` alone (torch unimportable, as
    in the API image); before the model is built it starts anyway and leaves the count to the
    worker, building nothing."""
    code = f"""
import sys
sys.modules["torch"] = None  # as in the API image: importing it fails
from pathlib import Path
from darkroom.api.app import create_app
from darkroom.engine.tokens import load_token_counters
from darkroom.settings import Settings
built = Settings(engine="tiny", tiny_model_path={str(tiny_model_dir)!r}, data_dir={str(tmp_path)!r})
counter = load_token_counters(built)["krea-2-turbo"]
assert counter.count("Z" * 641) == 641, counter.count("Z" * 641)
create_app(built)
missing = Settings(engine="tiny", data_dir={str(tmp_path / "fresh")!r})
assert load_token_counters(missing) == {{}}
assert not Path({str(tmp_path / "fresh")!r}, "tiny-krea2").exists(), "built by the API"
assert sys.modules["torch"] is None, "torch was imported"
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_tokenizer_file_serves_every_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The API image's setting: one tokenizer.json for every registered model, whatever its
    weights (here a hub id that is in no cache, with the hub unreachable)."""
    tokenizer = tiny_model_dir / "tokenizer" / "tokenizer.json"
    models = {"krea-2-turbo": {"weights": "krea/not-cached"}, "other": {"weights": "x/y"}}
    settings = Settings(
        engine="krea2", data_dir=tmp_path, tokenizer_file=tokenizer, models=models,
        prices={"krea-2-turbo": {"1K": 1, "2K": 2}, "other": {"1K": 1, "2K": 2}},
    )  # fmt: skip
    counters = load_token_counters(settings)
    assert sorted(counters) == ["krea-2-turbo", "other"]
    assert counters["other"].count("Z" * 641) == 641
    with pytest.raises(TokenizerMissing, match="no file at"):
        load_token_counters(settings.model_copy(update={"tokenizer_file": tmp_path / "none"}))
