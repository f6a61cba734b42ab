"""The real-size Krea 2 transformer at every contract resolution, on torch's meta device.

No GPU and no weights: meta tensors carry shapes only, so the 12.8B-parameter architecture
builds and runs a forward pass in a fraction of a second. This is what can be checked of the
GPU benchmark (bench/engine.py --config full) on a machine without one: that the real-size
architecture takes every size the contract offers, and the FLOPs its TFLOP/s figures rest on.
And, at the end, the real widths for real: a model truncated in depth (1 block, 3 text layers,
the whole VAE), saved, loaded through the worker's loader and run in bf16.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from bench.engine import full_size_pipeline, save_truncated, transformer_flops
from diffusers import Krea2Transformer2DModel

from darkroom.contract import SIZES, Quality
from darkroom.engine.base import Batch, Job
from darkroom.engine.krea2 import EngineOptions, Krea2Engine

SIZES_BY_QUALITY = [
    pytest.param(width, height, id=f"{size}-{quality.value}")
    for size, by_quality in SIZES.items()
    for quality, (width, height) in by_quality.items()
]


@pytest.fixture(scope="module")
def full_config() -> Mapping[str, Any]:
    with torch.device("meta"):
        transformer = Krea2Transformer2DModel()
    params = sum(p.numel() for p in transformer.parameters())
    assert params == pytest.approx(12.9e9, rel=0.01)  # the published size: diffusers' defaults
    return transformer.config


@pytest.mark.parametrize(("width", "height"), SIZES_BY_QUALITY)
def test_the_real_size_transformer_takes_every_contract_size(
    full_config: Mapping[str, Any], width: int, height: int
) -> None:
    # transformer_flops runs one forward pass and checks the velocity's shape.
    flops = transformer_flops(full_config, width, height, text_tokens=40)
    pixels = width * height
    # ~0.86-0.90 PFLOP per megapixel-class image at 1K, ~4.3-4.7 at 2K (attention grows as S^2).
    expected = (0.8e15, 1.0e15) if pixels < 2e6 else (4.0e15, 5.0e15)
    assert expected[0] < flops < expected[1]


def test_flops_grow_with_the_text_the_transformer_is_given(full_config: Mapping[str, Any]) -> None:
    """darkroom gives the transformer only the prompt's real tokens; diffusers a fixed block of
    about 519. The difference is what compact text saves at 1K."""
    width, height = SIZES["1:1"][Quality.K1]
    compact = transformer_flops(full_config, width, height, text_tokens=40)
    padded = transformer_flops(full_config, width, height, text_tokens=519)
    assert 1.10 < padded / compact < 1.20


def test_the_benchmarks_full_size_pipeline_builds_at_the_published_sizes() -> None:
    """What `bench/engine.py --config full` puts on the GPU, built here on the meta device."""
    pipe = full_size_pipeline(torch.device("meta"))
    params = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("transformer", "text_encoder", "vae")
    }
    assert params["transformer"] == pytest.approx(12.9e9, rel=0.01)
    # Qwen3-VL-4B's text tower without its 151k-token vocabulary (the benchmark's tokenizer is
    # small: the embedding table's size does not change the FLOPs a prompt costs).
    assert params["text_encoder"] == pytest.approx(3.6e9, rel=0.03)
    assert params["vae"] == pytest.approx(0.127e9, rel=0.03)
    # bf16, but for the norms from_pretrained keeps in fp32 (tests/engine/test_benchmark.py).
    dtypes = {n: p.dtype for n, p in pipe.transformer.named_parameters()}
    assert set(dtypes.values()) == {torch.bfloat16, torch.float32}
    assert all("norm" in n for n, dtype in dtypes.items() if dtype == torch.float32)
    # The text tower feeds the transformer's text fusion: same width, enough layers to tap.
    text = pipe.text_encoder.config.text_config
    assert text.hidden_size == pipe.transformer.config.text_hidden_dim
    assert text.num_hidden_layers >= pipe.transformer.config.num_text_layers


@pytest.fixture(scope="module")
def real_width_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every width of Krea 2 Turbo, 1 of its 28 blocks, 3 of its 36 text layers, the whole VAE:
    2.9 GB saved as a diffusers folder (random weights, bf16; the norms fp32)."""
    return save_truncated(tmp_path_factory.mktemp("real-width") / "krea2-1block")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_real_widths_in_bf16_through_the_loader_and_engine(real_width_dir: Path) -> None:
    """bf16 as a GPU runs it, at the real widths, through `load_pipeline` and `Krea2Engine`: the
    weights stay bf16 and the norms fp32 as loaded; a batch's images are each byte for byte
    their solo run; and bf16 draws what fp32 draws up to its rounding. Tiny pictures and one
    step: bf16 matrix products run at ~1.3 GFLOP/s on a CPU without bf16 instructions (100x
    slower than fp32), so a 32x32 image in bf16 takes ~8 s here."""
    jobs = (Job("t", "a cat", 1), Job("u", "a lighthouse on a cliff above a stormy sea", 2))
    batch = Batch("krea-2-turbo", 32, 32, jobs)
    pictures = {}
    for dtype in ("bfloat16", "float32"):
        options = EngineOptions(dtype=dtype, num_inference_steps=1)
        engine = Krea2Engine.load(str(real_width_dir), ("krea-2-turbo",), options)
        transformer = engine.pipe.transformer
        assert (
            transformer.config.num_attention_heads * transformer.config.attention_head_dim == 6144
        )
        block = transformer.transformer_blocks[0]
        assert block.attn.to_q.weight.dtype == getattr(torch, dtype)
        assert block.attn.norm_q.weight.dtype == torch.float32  # kept, as from_pretrained keeps
        pictures[dtype] = engine.generate(batch, lambda *_: None)
        if dtype == "bfloat16":
            [solo] = engine.generate(Batch("krea-2-turbo", 32, 32, jobs[1:]), lambda *_: None)
            assert solo.tobytes() == pictures[dtype][1].tobytes()
    for low, full in zip(pictures["bfloat16"], pictures["float32"], strict=True):
        assert low.shape == (32, 32, 3) and low.std() > 5  # a picture, not a flat colour
        # bf16 keeps 8 bits of mantissa: through one block and the VAE at these widths its
        # rounding moves pixels by about one level on average (0.9 seen, 5 at most). A wrong
        # computation differs by the pictures' own spread (a std of ~23 levels).
        difference = np.abs(low.astype(np.int16) - full.astype(np.int16))
        assert difference.mean() < 3 and difference.max() <= 24, (
            difference.mean(),
            difference.max(),
        )
