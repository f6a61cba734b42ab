"""Counting prompt tokens with the model's own tokenizer, without torch, for API processes."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import structlog

from darkroom.settings import Settings

log = structlog.get_logger("darkroom.tokens")


class TokenCounter(Protocol):
    def count(self, prompt: str) -> int:
        """Tokens the model's tokenizer makes of `prompt`, special tokens excluded."""


class FileTokenCounter:
    """A `tokenizers` tokenizer read from a pipeline's `tokenizer/tokenizer.json`."""

    def __init__(self, tokenizer_json: Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(tokenizer_json))

    def count(self, prompt: str) -> int:
        return len(self._tokenizer.encode(prompt, add_special_tokens=False).ids)


def _tokenizer_file(weights: str) -> Path | None:
    folder = Path(weights).expanduser()
    if folder.is_dir():
        candidate = folder / "tokenizer" / "tokenizer.json"
        return candidate if candidate.is_file() else None
    if weights.startswith((".", "/", "~")):
        return None
    from huggingface_hub import hf_hub_download

    try:  # the tokenizer alone is small: fetch it if the cache lacks it, never the weights
        return Path(hf_hub_download(weights, "tokenizer/tokenizer.json"))
    except Exception as exc:  # offline, unknown repo, no huggingface_hub auth...
        log.warning(
            "no tokenizer for the API; the worker will check prompt length", reason=str(exc)
        )
        return None


def load_token_counters(settings: Settings) -> dict[str, TokenCounter]:
    """Each registered model's own tokenizer, where this process can have it (models without
    one are still checked by the worker). Models sharing weights share one tokenizer."""
    by_weights: dict[str, TokenCounter | None] = {}
    counters: dict[str, TokenCounter] = {}
    for model in settings.models:
        weights = settings.weights_for(model)
        if weights not in by_weights:
            try:
                path = _tokenizer_file(weights)
                by_weights[weights] = FileTokenCounter(path) if path else None
            except ImportError:  # an API-only install without the engine extra
                by_weights[weights] = None
        counter = by_weights[weights]
        if counter is not None:
            counters[model] = counter
    return counters
