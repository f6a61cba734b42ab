"""Builds the engine a worker's settings ask for. Imports torch: call from worker processes only."""

from __future__ import annotations

import structlog

from darkroom.contract import SIZES
from darkroom.engine.krea2 import EngineOptions, Krea2Engine
from darkroom.settings import Settings

log = structlog.get_logger("darkroom.engine")


def load_engine(settings: Settings) -> Krea2Engine:
    """The configured engine, loaded; raises ModelUnavailable, never falls back to another."""
    options = EngineOptions(
        device=settings.device,
        num_inference_steps=settings.num_inference_steps,
        attention_backend=settings.attention_backend,
        compile_blocks=settings.compile,
        vae_tiling=settings.vae_tiling,
        fp8=settings.fp8,
    )
    if settings.engine == "tiny":
        from darkroom.engine.tiny import ensure_tiny_model

        path = str(ensure_tiny_model(settings.tiny_model_dir))
    else:
        path = settings.model_path
    engine = Krea2Engine.load(path, settings.models, options)
    warm = settings.warmup if settings.warmup is not None else engine.device.type == "cuda"
    if warm:
        sizes = sorted({dims for by_quality in SIZES.values() for dims in by_quality.values()})
        log.info("warming up", sizes=len(sizes))
        engine.warm_up(sizes, lambda done, total: log.info("warm-up", done=done, total=total))
    return engine
