"""Seconds per image and achieved TFLOP/s: plain diffusers `Krea2Pipeline` vs darkroom's engine.

Both run in the same process on the same pipeline object, with the same seeds and turbo settings
(8 steps, guidance 0). `--config full` builds the real-size Krea 2 architecture (12.9B-parameter
transformer, Qwen3-VL-4B-sized text encoder, Qwen-Image VAE) with random weights in bf16: random
weights cost the same FLOPs as the real ones, and need no download. `--config tiny` is the
offline test model, so the script starts on a CPU.

    python bench/engine.py --config full --quality 1K 2K      # on an H100/H200
    python bench/engine.py --config tiny --quality 1K         # anywhere
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    Krea2Pipeline,
    Krea2Transformer2DModel,
)
from transformers import Qwen3VLConfig, Qwen3VLModel

from darkroom.contract import Quality, pixel_size
from darkroom.engine.base import Batch, Job
from darkroom.engine.krea2 import EngineOptions, Krea2Engine
from darkroom.engine.tiny import build_tiny_pipeline, build_tokenizer

# Qwen3-VL-4B's text tower, as published in its config.
QWEN3_VL_4B_TEXT = {
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 262144,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 5000000.0,
        "mrope_section": [24, 20, 20],
    },
}


def full_size_pipeline(device: torch.device) -> Krea2Pipeline:
    # A small BPE vocabulary: it counts a prompt's tokens a little differently from Qwen's.
    tokenizer = build_tokenizer()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with device:
            text_config = {**QWEN3_VL_4B_TEXT, "vocab_size": len(tokenizer)}
            vision = {"depth": 1, "hidden_size": 64, "intermediate_size": 64, "num_heads": 2,
                      "out_hidden_size": 2560, "deepstack_visual_indexes": []}  # fmt: skip
            text_encoder = Qwen3VLModel(
                Qwen3VLConfig(text_config=text_config, vision_config=vision)
            )
            transformer = Krea2Transformer2DModel()
            vae = AutoencoderKLQwenImage()
    finally:
        torch.set_default_dtype(previous)
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=6400,
    )  # fmt: skip
    pipe = Krea2Pipeline(
        scheduler=scheduler,
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        transformer=transformer.eval(),
        is_distilled=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def transformer_flops(
    config: Mapping[str, Any], width: int, height: int, text_tokens: int, steps: int = 8
) -> float:
    """The transformer's FLOPs for one image over all steps, counted, not estimated: torch's
    FlopCounterMode over one forward pass of a transformer of this config on the meta device
    (shapes only: no weights, no arithmetic, a fraction of a second even at the real size).

    It counts the matrix products and attention that dominate. The textbook estimate
    2*P*S + 4*L*S^2*D a step counts ~4 % too many at the real size: the text-fusion layers'
    parameters act on the text tokens only, not on all S.
    """
    with torch.device("meta"):
        transformer = Krea2Transformer2DModel.from_config(config)
        image_tokens = (width // 16) * (height // 16)
        latents = torch.empty(1, image_tokens, transformer.config.in_channels)
        text = torch.empty(
            1, text_tokens, transformer.config.num_text_layers, transformer.config.text_hidden_dim
        )
        positions = torch.zeros(text_tokens + image_tokens, 3, dtype=torch.long)
        mask = torch.ones(1, text_tokens, dtype=torch.bool)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            (velocity,) = transformer(
                hidden_states=latents,
                encoder_hidden_states=text,
                timestep=torch.empty(1),
                position_ids=positions,
                encoder_attention_mask=mask,
                return_dict=False,
            )
    if velocity.shape != latents.shape:
        raise RuntimeError(f"{width}x{height}: the transformer returned {tuple(velocity.shape)}")
    return float(counter.get_total_flops() * steps)


def timed(run: Any, device: torch.device, repeats: int) -> float:
    run()  # warm-up: allocator, kernels, any compilation
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


@contextlib.contextmanager
def unwrapped(pipe: Krea2Pipeline) -> Iterator[None]:
    """The pipeline exactly as diffusers ships it: the engine's per-module wrappers set aside."""
    saved = [
        (module, name, module.__dict__.pop(name))
        for component in (pipe.transformer, pipe.vae)
        for module in component.modules()
        for name in ("forward", "decode")
        if name in module.__dict__
    ]
    try:
        yield
    finally:
        for module, name, method in saved:
            setattr(module, name, method)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=["full", "tiny"], default="tiny")
    parser.add_argument("--quality", nargs="+", default=["1K"], choices=[q.value for q in Quality])
    parser.add_argument("--size", default="1:1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--padded-text",
        action="store_true",
        help="darkroom with compact_text off (the pipeline's fixed 640-token text block)",
    )
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.config == "full":
        pipe = full_size_pipeline(device)
    else:
        pipe = build_tiny_pipeline().to(device)
        pipe.set_progress_bar_config(disable=True)
    options = EngineOptions(device=str(device), compact_text=not args.padded_text)
    engine = Krea2Engine(pipe, ("krea-2-turbo",), options)
    prompt = "a lighthouse on a cliff above a stormy sea at dusk"
    # Text tokens the transformer runs on: diffusers' default block (512 + template), or darkroom's.
    plain_text = (
        512
        - pipe.prompt_template_encode_num_suffix_tokens
        + len(pipe.tokenizer(pipe.prompt_template_encode_suffix).input_ids)
    )
    ours_text = (
        int(engine.encode([prompt])[1].sum())
        if options.compact_text
        else engine.max_sequence_length + plain_text - 512
    )
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"device: {name}, config: {args.config}, text tokens: plain {plain_text}, darkroom {ours_text}"
    )
    print(
        "quality  size         plain s/img  darkroom s/img  plain TFLOP/s  darkroom TFLOP/s  darkroom/plain"
    )
    for q in args.quality:
        width, height = pixel_size(args.size, Quality(q))

        def plain(width: int = width, height: int = height) -> None:
            with unwrapped(pipe):
                pipe(prompt=prompt, width=width, height=height, num_inference_steps=8,
                     guidance_scale=0.0, generator=torch.Generator(device).manual_seed(1))  # fmt: skip

        def ours(width: int = width, height: int = height) -> None:
            engine.generate(
                Batch("krea-2-turbo", width, height, (Job("b", prompt, 1),)), lambda _d, _t: None
            )

        plain_s, ours_s = timed(plain, device, args.repeats), timed(ours, device, args.repeats)
        # Achieved rates: each side's own work (darkroom skips the padded text tokens).
        config = pipe.transformer.config
        plain_tf = transformer_flops(config, width, height, plain_text) / plain_s / 1e12
        ours_tf = transformer_flops(config, width, height, ours_text) / ours_s / 1e12
        print(
            f"{q:8} {width}x{height:<6} {plain_s:12.3f} {ours_s:15.3f} {plain_tf:14.3g} {ours_tf:17.3g} {ours_s / plain_s:15.3f}"
        )


if __name__ == "__main__":
    main()
