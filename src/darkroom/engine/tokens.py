"""Counting prompt tokens with the model's own tokenizer, without torch, for API processes."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import structlog

from darkroom.engine.hub import hub_offline, is_hub_id
from darkroom.engine.tiny_marker import tiny_model_ready
from darkroom.settings import Settings

log = structlog.get_logger("darkroom.tokens")

TOKENIZER_FILE = "tokenizer/tokenizer.json"


class TokenizerMissing(RuntimeError):
    """The API cannot count prompt tokens: `tokenizers` is not installed."""


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
    """The pipeline's tokenizer file: in its folder, or from the hub's cache (downloaded alone,
    never the weights, when the cache lacks it and the hub may be contacted)."""
    if not is_hub_id(weights):
        candidate = Path(weights).expanduser() / "tokenizer" / "tokenizer.json"
        if candidate.is_file():
            return candidate
        log.warning(
            "no tokenizer in the model folder; the worker will check prompt length",
            folder=weights,
        )
        return None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(weights, TOKENIZER_FILE, local_files_only=True))
    except LocalEntryNotFoundError:
        if hub_offline():
            log.warning(
                "the tokenizer is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
                "the worker will check prompt length",
                model=weights,
            )
            return None
    try:
        return Path(hf_hub_download(weights, TOKENIZER_FILE))
    except Exception as exc:  # no network, unknown repo, no auth...
        log.warning(
            "no tokenizer for the API; the worker will check prompt length", reason=str(exc)
        )
        return None


def load_token_counters(settings: Settings) -> dict[str, TokenCounter]:
    """Each registered model's own tokenizer, where this process can have it (models without
    one are still checked by the worker). Models sharing weights share one tokenizer.

    With the tiny engine, its tokenizer is read from the built tiny model; this process never
    builds it (that takes torch, which an API process does not import): `darkroom serve`
    builds it before its API starts, as a worker does, so the 640-token limit holds from the
    first request."""
    if settings.tokenizer_file is not None:
        if not settings.tokenizer_file.is_file():
            raise TokenizerMissing(f"DARKROOM_TOKENIZER_FILE: no file at {settings.tokenizer_file}")
        shared = _file_counter(settings.tokenizer_file)
        return dict.fromkeys(settings.models, shared)
    by_weights: dict[str, TokenCounter | None] = {}
    counters: dict[str, TokenCounter] = {}
    for model in settings.models:
        weights = settings.weights_for(model)
        if weights not in by_weights:
            tiny = settings.engine == "tiny" and settings.models[model].weights is None
            if tiny and not tiny_model_ready(settings.tiny_model_dir):
                log.warning(
                    "the tiny model is not built yet (`darkroom serve` and workers build it); "
                    "until then the worker checks prompt length",
                    folder=str(settings.tiny_model_dir),
                )
                by_weights[weights] = None
                continue
            path = _tokenizer_file(weights)
            by_weights[weights] = _file_counter(path) if path else None
        counter = by_weights[weights]
        if counter is not None:
            counters[model] = counter
    return counters


def _file_counter(path: Path) -> TokenCounter:
    try:
        return FileTokenCounter(path)
    except ImportError:
        # Starting anyway would queue and reserve over-long prompts: refuse, and say why.
        raise TokenizerMissing(
            "the API counts each prompt's tokens (the 640-token limit) with the model's "
            "own tokenizer, which needs the `tokenizers` package: "
            "pip install 'darkroom[api]'"
        ) from None
