"""The real-size Krea 2 transformer at every contract resolution, on torch's meta device.

No GPU and no weights: meta tensors carry shapes only, so the 12.8B-parameter architecture
builds and runs a forward pass in a fraction of a second. This is what can be checked of the
GPU benchmark (bench/engine.py --config full) on a machine without one: that the real-size
architecture takes every size the contract offers, and the FLOPs its TFLOP/s figures rest on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch
from bench.engine import transformer_flops
from diffusers import Krea2Transformer2DModel

from darkroom.contract import SIZES, Quality

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
