"""Seconds per image and achieved TFLOP/s: plain diffusers `Krea2Pipeline` vs darkroom's engine.

Both run in the same process on the same pipeline object, with the same seeds and turbo settings
(8 steps, guidance 0). `--config full` builds the real-size Krea 2 architecture (12.9B-parameter
transformer, Qwen3-VL-4B-sized text encoder, Qwen-Image VAE) with random weights in bf16: random
weights cost the same FLOPs as the real ones, and need no download. `--config tiny` is the
offline test model, so the script starts on a CPU.

    python bench/engine.py --config full --quality 1K 2K      # on an H100/H200
    python bench/engine.py --config tiny --quality 1K         # anywhere
    python bench/engine.py --config full --attention-backend _native_cudnn --compile
    python bench/engine.py --save-truncated /tmp/krea2-1block   # real widths, 1 block, 3 text layers

The full-size pipeline's weights are in bf16 but for the modules `from_pretrained` keeps in
fp32 (`_keep_in_fp32_modules`: the transformer's norms), as production loads them. The speed
options (`--attention-backend`, `--compile`, `--fp8`, `--vae-tiling`, `--padded-text`,
`--frame-convs-3d`) reach the engine as the worker's settings would. TFLOP/s are the transformer's counted FLOPs over the
transformer's own time (hooks around its calls), printed beside end-to-end seconds per image.
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
from darkroom.engine.speed import apply_speed_options
from darkroom.engine.tiny import build_tiny_pipeline, build_tokenizer
from darkroom.engine.wrappers import without_darkroom_wrappers

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


def as_loaded(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with the parameters `from_pretrained` keeps in fp32 put back in fp32: those with a
    name segment in the class's `_keep_in_fp32_modules` (diffusers' rule). Built in bf16, the
    transformer's norms would take torch's slower unfused bf16 RMSNorm, which production never
    runs."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or ()
    for name, parameter in model.named_parameters():
        if any(segment in keep for segment in name.split(".")):
            parameter.data = parameter.data.float()
    return model


def full_size_pipeline(
    device: torch.device, *, blocks: int | None = None, text_layers: int | None = None
) -> Krea2Pipeline:
    """The real Krea 2 Turbo architecture with random weights, in bf16 (norms in fp32).

    `blocks` and `text_layers` truncate it in depth only, every width real: the transformer's
    first `blocks` of its 28 blocks, the text encoder's first `text_layers` of its 36 layers
    (all of them tapped), the whole VAE. A model a CPU can run and save, on the same code paths
    and kernels' shapes as the real one.
    """
    # A small BPE vocabulary: it counts a prompt's tokens a little differently from Qwen's.
    tokenizer = build_tokenizer()
    text_config = {**QWEN3_VL_4B_TEXT, "vocab_size": len(tokenizer)}
    select: dict[str, Any] = {}
    transformer_config: dict[str, Any] = {}
    if text_layers is not None:
        text_config["num_hidden_layers"] = text_layers
        select["text_encoder_select_layers"] = tuple(range(1, text_layers + 1))
        transformer_config["num_text_layers"] = text_layers
    if blocks is not None:
        transformer_config["num_layers"] = blocks
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with device:
            vision = {"depth": 1, "hidden_size": 64, "intermediate_size": 64, "num_heads": 2,
                      "out_hidden_size": 2560, "deepstack_visual_indexes": []}  # fmt: skip
            text_encoder = Qwen3VLModel(
                Qwen3VLConfig(text_config=text_config, vision_config=vision)
            )
            transformer = as_loaded(Krea2Transformer2DModel(**transformer_config))
            vae = as_loaded(AutoencoderKLQwenImage())
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
        **select,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_truncated(folder: Path, *, blocks: int = 1, text_layers: int = 3) -> Path:
    """The real-width truncated model saved as a diffusers folder (about 2.4 GB in bf16 at 1
    block and 3 text layers), for `load_pipeline` and `gpu_bench.py --model-dir`."""
    torch.manual_seed(0)
    pipe = full_size_pipeline(torch.device("cpu"), blocks=blocks, text_layers=text_layers)
    pipe.save_pretrained(folder)
    return folder


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


def timed(
    run: Any, device: torch.device, repeats: int, clock: TransformerClock | None = None
) -> tuple[float, float]:
    """Median seconds per run, and the transformer's mean seconds per run (0 without a clock),
    after one untimed run (allocator, kernels, any compilation)."""
    run()
    samples = []
    inside = clock.seconds if clock else 0.0
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    transformer_s = ((clock.seconds - inside) / repeats) if clock else 0.0
    return statistics.median(samples), transformer_s


@contextlib.contextmanager
def unwrapped(pipe: Krea2Pipeline) -> Iterator[None]:
    """The pipeline as diffusers runs it: darkroom's per-module wrappers set aside, and only
    those (diffusers' own hooks, for offload or fp8 casting, stay where they are)."""
    with without_darkroom_wrappers(pipe):
        yield


class TransformerClock:
    """Seconds spent inside the transformer's calls, from hooks around them (synchronised on
    CUDA), so achieved TFLOP/s divide its FLOPs by its own time, not the whole image's."""

    def __init__(self, transformer: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self._started = 0.0
        transformer.register_forward_pre_hook(self._start)
        transformer.register_forward_hook(self._stop)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _start(self, *_: Any) -> None:
        self._sync()
        self._started = time.perf_counter()

    def _stop(self, *_: Any) -> None:
        self._sync()
        self.seconds += time.perf_counter() - self._started


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """The worker's speed settings, as flags."""
    parser.add_argument("--attention-backend", default=None)
    parser.add_argument("--compile", action="store_true", help="regional torch.compile")
    parser.add_argument("--fp8", choices=["off", "storage", "torchao"], default="off")
    parser.add_argument("--vae-tiling", action="store_true")
    parser.add_argument(
        "--padded-text",
        action="store_true",
        help="darkroom with compact_text off (the pipeline's fixed padded text block)",
    )
    parser.add_argument(
        "--frame-convs-3d",
        action="store_true",
        help="darkroom with the VAE's causal 3D convolutions as diffusers runs them",
    )


def engine_options(args: argparse.Namespace, device: torch.device) -> EngineOptions:
    return EngineOptions(
        device=str(device),
        compact_text=not args.padded_text,
        attention_backend=args.attention_backend,
        compile_blocks=args.compile,
        fp8=args.fp8,
        vae_tiling=args.vae_tiling,
        frame_convs_2d=not args.frame_convs_3d,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=["full", "tiny"], default="tiny")
    parser.add_argument("--quality", nargs="+", default=["1K"], choices=[q.value for q in Quality])
    parser.add_argument("--size", default="1:1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--save-truncated", metavar="DIR", default="",
                        help="only save the real-width model truncated to --blocks and "
                        "--text-layers into DIR, and exit")  # fmt: skip
    parser.add_argument("--blocks", type=int, default=1)
    parser.add_argument("--text-layers", type=int, default=3)
    add_engine_options(parser)
    args = parser.parse_args()
    if args.save_truncated:
        folder = save_truncated(
            Path(args.save_truncated), blocks=args.blocks, text_layers=args.text_layers
        )
        print(f"saved {folder}")
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.config == "full":
        pipe = full_size_pipeline(device)
    else:
        pipe = build_tiny_pipeline().to(device)
        pipe.set_progress_bar_config(disable=True)
    options = engine_options(args, device)
    apply_speed_options(pipe, options)  # as load_pipeline does for the worker
    engine = Krea2Engine(pipe, ("krea-2-turbo",), options)
    clock = TransformerClock(pipe.transformer, device)
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
        "quality  size         plain s/img  darkroom s/img  darkroom/plain  "
        "plain transformer s (TFLOP/s)  darkroom transformer s (TFLOP/s)"
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

        plain_s, plain_in = timed(plain, device, args.repeats, clock)
        ours_s, ours_in = timed(ours, device, args.repeats, clock)
        # Achieved rates: each side's own work (darkroom skips the padded text tokens) over the
        # transformer's own time.
        config = pipe.transformer.config
        plain_tf = transformer_flops(config, width, height, plain_text) / plain_in / 1e12
        ours_tf = transformer_flops(config, width, height, ours_text) / ours_in / 1e12
        print(
            f"{q:8} {width}x{height:<6} {plain_s:12.3f} {ours_s:15.3f} {ours_s / plain_s:15.3f}"
            f"  {plain_in:12.3f} ({plain_tf:.3g}) {ours_in:19.3f} ({ours_tf:.3g})"
        )


if __name__ == "__main__":
    main()
