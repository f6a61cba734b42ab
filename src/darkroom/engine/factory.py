"""Builds the engine a worker's settings ask for. Imports torch: call from worker processes only."""

from __future__ import annotations

from darkroom.engine.krea2 import EngineOptions, Krea2Engine
from darkroom.settings import Settings


def load_engine(settings: Settings) -> Krea2Engine:
    """The configured engine, loaded; raises ModelUnavailable, never falls back to another."""
    options = EngineOptions(
        device=settings.device, num_inference_steps=settings.num_inference_steps
    )
    if settings.engine == "tiny":
        from darkroom.engine.tiny import ensure_tiny_model

        path = str(ensure_tiny_model(settings.tiny_model_dir))
    else:
        path = settings.model_path
    return Krea2Engine.load(path, settings.models, options)
