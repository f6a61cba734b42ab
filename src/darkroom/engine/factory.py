"""Builds the engine a worker's settings ask for. Imports torch: call from worker processes only."""

from __future__ import annotations

import time
from typing import TypeVar

import structlog

from darkroom.contract import SIZES, Quality
from darkroom.engine.krea2 import Krea2Engine
from darkroom.engine.options import EngineOptions
from darkroom.settings import Settings

log = structlog.get_logger("darkroom.engine")

T = TypeVar("T")


def engine_options(settings: Settings, model: str) -> EngineOptions:
    """The registry entry's configuration, its unset fields taken from the global settings."""
    config = settings.models[model]

    def pick(own: T | None, default: T) -> T:
        return default if own is None else own

    return EngineOptions(
        device=settings.device,
        dtype=config.dtype,
        num_inference_steps=pick(config.steps, settings.num_inference_steps),
        guidance_scale=config.guidance_scale,
        attention_backend=pick(config.attention_backend, settings.attention_backend),
        compile_blocks=pick(config.compile, settings.compile),
        vae_tiling=pick(config.vae_tiling, settings.vae_tiling),
        fp8=pick(config.fp8, settings.fp8),
        offload=pick(config.offload, settings.offload),
        compact_text=pick(config.compact_text, settings.compact_text),
        native_gqa=pick(config.native_gqa, settings.native_gqa),
        pause_file=(
            str(settings.tiny_pause_file)
            if settings.engine == "tiny" and settings.tiny_pause_file
            else None
        ),
    )


def adopt_library_logs(*, progress_bars: bool) -> None:
    """diffusers' and transformers' lines through darkroom's handler and renderer
    (darkroom/logging.py) instead of their own stderr handlers; their loading bars only where
    a person reads the log (a bar is not a JSON line)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.disable_default_handler()
        library.enable_propagation()
        if not progress_bars:
            library.disable_progress_bar()


def load_engine(settings: Settings) -> Krea2Engine:
    """The configured engine, loaded; raises ModelUnavailable, never falls back to another."""
    adopt_library_logs(progress_bars=settings.log_format == "console")
    name = settings.served_model
    options = engine_options(settings, name)
    path = settings.weights_for(name)
    if settings.engine == "tiny" and settings.models[name].weights is None:
        from darkroom.engine.tiny import ensure_tiny_model

        path = str(ensure_tiny_model(settings.tiny_model_dir))
    log.info("loading", model=name, weights=path, steps=options.num_inference_steps)
    engine = Krea2Engine.load(path, (name,), options)
    warm = settings.warmup if settings.warmup is not None else engine.device.type == "cuda"
    if warm:
        sizes = warm_up_sizes()
        log.info("warming up", sizes=len(sizes))
        started = time.perf_counter()
        engine.warm_up(sizes, lambda done, total: log.info("warm-up", done=done, total=total))
        log.info("warmed up", seconds=round(time.perf_counter() - started, 1))
    return engine


def warm_up_sizes() -> list[tuple[int, int]]:
    """The (width, height) pairs whose first generation pays what later ones should not.

    Compilation and kernel selection, not every size: a compiled graph is made at the first
    shape and made dynamic at the second (one recompile), after which new sizes reuse it. So:
    the square 1K, one other 1K shape (the recompile), and the largest 2K (the VAE's and
    attention's largest buffers and kernels). Generating at all 20 distinct sizes took minutes.
    """
    square_1k = SIZES["1:1"][Quality.K1]
    wide_1k = SIZES["16:9"][Quality.K1]
    largest_2k = max((by_quality[Quality.K2] for by_quality in SIZES.values()), key=_pixels)
    return [square_1k, wide_1k, largest_2k]


def _pixels(size: tuple[int, int]) -> int:
    return size[0] * size[1]
