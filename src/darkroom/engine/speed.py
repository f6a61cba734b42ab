"""The switchable speed work applied to a loaded pipeline: attention backend and grouped heads,
fp8 (layerwise casting or torchao's fp8 matmuls on the blocks), VAE tiling, regional compile."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from diffusers import Krea2Pipeline

from darkroom.attention_backends import MASK_REFUSING_BACKENDS
from darkroom.engine.attention import GroupedKVAttnProcessor
from darkroom.engine.base import ModelUnavailable
from darkroom.engine.options import EngineOptions


def apply_speed_options(pipe: Krea2Pipeline, options: EngineOptions) -> None:
    """The switchable speed work; each step is a diffusers, torch or torchao API, never a rewrite."""
    if options.attention_backend in MASK_REFUSING_BACKENDS and not options.compact_text:
        # Settings refuse this too; here for engines built from options alone (bench/).
        raise ModelUnavailable(
            f"attention backend {options.attention_backend} takes no attention mask, and without "
            "compact text the transformer attends over a padded, masked text block"
        )
    if options.fp8 == "storage":
        # Weights kept in fp8, computed in the pipeline's dtype: halves the transformer's memory.
        pipe.transformer.enable_layerwise_casting(
            storage_dtype=torch.float8_e4m3fn, compute_dtype=pipe.transformer.dtype
        )
    elif options.fp8 == "torchao":
        quantize_blocks_fp8(pipe.transformer)
    if options.native_gqa and options.compact_text:
        # Before the backend is set: setting it reaches every processor the model has then.
        pipe.transformer.set_attn_processor(GroupedKVAttnProcessor())
    if options.attention_backend:
        # Without compact text, Krea 2 passes a text mask: the backend must take one (settings
        # refuse those that do not, see MASK_REFUSING_BACKENDS).
        set_backend_of(pipe.transformer, options.attention_backend)
    if options.vae_tiling:
        pipe.vae.enable_tiling()
    if options.compile_blocks:
        compile_blocks(pipe.transformer)


def set_backend_of(transformer: torch.nn.Module, backend: str) -> None:
    """Give this model's attention `backend`, and only this model's: diffusers'
    `set_attention_backend` also makes it the whole process's active backend, which every other
    model without one of its own would then use (an engine loaded later in the same process,
    a test's reference pipeline)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    active = _AttentionBackendRegistry._active_backend
    try:
        transformer.set_attention_backend(backend)
    finally:
        _AttentionBackendRegistry.set_active_backend(active)


def compile_blocks(transformer: torch.nn.Module, **kwargs: Any) -> None:
    """Regional compilation: one compiled block reused 28 times keeps start-up short. The
    compilation itself happens at the first image (the warm-up on CUDA)."""
    transformer.compile_repeated_blocks(fullgraph=True, **kwargs)


def uncompile(transformer: torch.nn.Module) -> int:
    """Take regional compilation off again: the blocks run eagerly. Returns how many were."""
    undone = 0
    for module in transformer.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None
            undone += 1
    torch._dynamo.reset()  # graphs, guards and the recompile counts of what was compiled
    return undone


def is_compile_failure(exc: BaseException) -> bool:
    """Whether `exc` is torch.compile failing (a graph break under fullgraph, a backend that
    could not compile), not the model's arithmetic."""
    from torch._dynamo.exc import TorchDynamoException

    return isinstance(exc, TorchDynamoException)


def fp8_block_filter(module: torch.nn.Module, fqn: str) -> bool:
    """The linears torchao turns into fp8 matmuls: those of the 28 transformer blocks only.

    The timestep modulation, the text fusion and projection, the image input and the final
    layer stay in bf16: they are a few percent of the FLOPs, and the most sensitive to
    rounding (SGLang's Krea 2 fp8 keeps the same boundary layers in bf16).
    """
    return isinstance(module, torch.nn.Linear) and fqn.startswith("transformer_blocks.")


def fp8_config() -> Any:
    """Dynamic fp8 activations and fp8 weights, each scaled per row (per-tensor scales let one
    outlier row decide every row's precision)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())


def quantize_blocks_fp8(transformer: torch.nn.Module) -> None:
    with process_settings_kept():
        try:
            from torchao.quantization import quantize_
        except ImportError as exc:
            raise ModelUnavailable(
                "DARKROOM_FP8=torchao needs the fp8 extra: pip install 'darkroom[fp8]'"
            ) from exc
        quantize_(transformer, fp8_config(), filter_fn=fp8_block_filter)


@contextlib.contextmanager
def process_settings_kept() -> Iterator[None]:
    """Undo what a library changes of torch's process-wide settings while inside.

    torchao's `quantize_` turns on inductor's coordinate-descent tuning and sets the fp32 matmul
    precision to "high" (TF32) for the whole process: every later float32 matmul anywhere in the
    worker, and every later compilation, would change without anyone asking for it.
    """
    import torch._inductor.config as inductor

    precision = torch.get_float32_matmul_precision()
    config = inductor.get_config_copy()
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        inductor.load_config(config)
