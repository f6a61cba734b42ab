"""The 640-token prompt limit at submit, counted with the model's own tokenizer."""

from __future__ import annotations

import sys

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
