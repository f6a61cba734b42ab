"""Builds the engine a worker's settings ask for. Imports torch: call from worker processes only."""

from __future__ import annotations

from typing import TypeVar

import structlog

from darkroom.contract import SIZES
from darkroom.engine.krea2 import EngineOptions, Krea2Engine
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
    )


def load_engine(settings: Settings) -> Krea2Engine:
    """The configured engine, loaded; raises ModelUnavailable, never falls back to another."""
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
        sizes = sorted({dims for by_quality in SIZES.values() for dims in by_quality.values()})
        log.info("warming up", sizes=len(sizes))
        engine.warm_up(sizes, lambda done, total: log.info("warm-up", done=done, total=total))
    return engine
