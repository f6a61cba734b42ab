"""The engine a worker's settings ask for: a remote one (forwarding, no torch imported), or the
model loaded in this process (`engine.factory`, which imports torch)."""

from __future__ import annotations

from darkroom.engine.base import Engine
from darkroom.settings import Settings


def load_any_engine(settings: Settings) -> Engine:
    """The served model's engine; raises ModelUnavailable, never falls back to another."""
    if settings.models[settings.served_model].remote is not None:
        from darkroom.engine.remote import RemoteImageEngine

        return RemoteImageEngine.from_settings(settings, settings.served_model)
    from darkroom.engine.factory import load_engine

    return load_engine(settings)
