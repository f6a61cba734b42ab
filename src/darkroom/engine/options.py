"""The engine's options: what a registry entry and the settings choose, as plain values."""

from __future__ import annotations

from dataclasses import dataclass

TURBO_STEPS = 8
TURBO_GUIDANCE = 0.0


@dataclass(frozen=True, slots=True)
class EngineOptions:
    device: str | None = None
    # None: bfloat16 on a GPU, float32 on a CPU (where bf16 is slow); a dtype named is kept.
    dtype: str | None = None
    num_inference_steps: int = TURBO_STEPS
    guidance_scale: float = TURBO_GUIDANCE
    # Batched matrix products round differently from single ones (by ~1e-6 here), which moves
    # a few pixels by one level: run the transformer and VAE one image at a time inside a batch
    # so a seed gives the same bytes alone or batched. The text encoder is batch-invariant.
    batch_invariant: bool = True
    # Encode each prompt at its own length, not padded to 640 tokens (see `Krea2Engine.encode`).
    compact_text: bool = True
    # The VAE's causal 3D convolutions of a picture (one frame) as 2D ones (see engine/vae.py).
    frame_convs_2d: bool = True
    # Speed work, each switchable (see docs/configuration.md). None/False: plain diffusers.
    attention_backend: str | None = None
    compile_blocks: bool = False
    vae_tiling: bool = False
    fp8: str = "off"
    # "none": the whole pipeline on the device; "model"/"sequential": diffusers' CPU offload.
    offload: str = "none"
    # Attention reads the key/value heads as they are (SDPA's GQA) instead of copies to 48.
    native_gqa: bool = False
    # While this file exists, each generation waits after its first step (the tiny engine's
    # live-progress demos and tests; see Settings.tiny_pause_file).
    pause_file: str | None = None
