"""darkroom's wrappers of diffusers' modules, marked so they can be told apart and taken off.

The engine replaces a few methods on the pipeline's module instances (batch invariance, compact
text, the VAE's fast paths); benchmarks and tests compare against diffusers alone by running
inside `without_darkroom_wrappers`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from diffusers import Krea2Pipeline

WRAPPER_MARK = "_darkroom_wrapped"


def wrap(module: torch.nn.Module, name: str, replacement: Any, wrapped: Any) -> None:
    """Set `module.name` to darkroom's `replacement` of `wrapped` (what was there: the class's
    method, or a hook diffusers installed on the instance), marked so it can be told from
    diffusers' own. The mark holds what the instance had: its own attribute, or none."""
    replacement.__wrapped__ = wrapped
    setattr(replacement, WRAPPER_MARK, module.__dict__.get(name, _CLASS_METHOD))
    setattr(module, name, replacement)


_CLASS_METHOD = object()  # the instance had no attribute of its own: the class's method ran


@contextlib.contextmanager
def without_darkroom_wrappers(pipe: Krea2Pipeline) -> Iterator[None]:
    """Inside, the transformer and VAE run as diffusers alone would: every wrapper darkroom set
    is taken off, and only those (diffusers' own hooks, for offload or fp8 casting, stay)."""
    saved = []
    for component in (pipe.transformer, pipe.vae):
        for module in component.modules():
            for name in ("forward", "decode"):
                ours = module.__dict__.get(name)
                before = getattr(ours, WRAPPER_MARK, None)
                if before is None:
                    continue
                saved.append((module, name, ours))
                if before is _CLASS_METHOD:
                    delattr(module, name)
                else:
                    setattr(module, name, before)
    try:
        yield
    finally:
        for module, name, ours in saved:
            setattr(module, name, ours)
