"""Krea 2 Turbo through diffusers' `Krea2Pipeline`: loading (hub id or folder) and generation."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import Krea2Pipeline
from PIL.Image import Image

from darkroom.contract import PROMPT_TOKEN_LIMIT
from darkroom.engine.base import Batch, Job, ModelUnavailable, PromptTooLong, StepCallback
from darkroom.engine.hub import hub_offline, is_hub_id
from darkroom.engine.vae import decode_one_at_a_time, fast_cpu_norms, one_frame_convs_2d
from darkroom.engine.wrappers import wrap

log = logging.getLogger(__name__)

TURBO_STEPS = 8
TURBO_GUIDANCE = 0.0


@dataclass(frozen=True, slots=True)
class EngineOptions:
    device: str | None = None
    dtype: str = "bfloat16"
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


def _ignore(_done: int, _total: int) -> None:
    return None


def resolve_weights(model_path: str) -> Path:
    """A local folder holding the pipeline: `model_path` itself, or its Hugging Face snapshot.

    A hub id is looked up in the local cache first; only if it is missing, and the hub may be
    contacted (no HF_HUB_OFFLINE), is it downloaded (once, with huggingface_hub's progress bar).
    Without network and weights, the error says how to fix it.
    """
    if not is_hub_id(model_path):
        folder = Path(model_path).expanduser()
        if not folder.is_dir():
            raise ModelUnavailable(f"model folder {model_path} does not exist")
        if not (folder / "model_index.json").is_file():
            raise ModelUnavailable(
                f"{folder} is not a diffusers pipeline folder (no model_index.json)"
            )
        return folder
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    how_to_fix = (
        f"Download them where there is network with `hf download {model_path}` (then copy the "
        "cache), or set DARKROOM_MODEL_PATH to a folder that holds them."
    )
    try:
        return Path(snapshot_download(model_path, local_files_only=True))
    except LocalEntryNotFoundError:
        if hub_offline():
            raise ModelUnavailable(
                f"the weights of {model_path} are not in the Hugging Face cache, and "
                f"HF_HUB_OFFLINE is set. {how_to_fix}"
            ) from None
    log.info("downloading %s to the Hugging Face cache (once)", model_path)
    try:
        return Path(snapshot_download(model_path))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise ModelUnavailable(
            f"the weights of {model_path} are not in the Hugging Face cache and could not be "
            f"downloaded ({type(exc).__name__}). {how_to_fix}"
        ) from exc


def pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pipeline(model_path: str, options: EngineOptions) -> Krea2Pipeline:
    """Load `Krea2Pipeline` from a hub id or folder, on the chosen device and dtype."""
    folder = resolve_weights(model_path)
    device = pick_device(options.device)
    dtype = getattr(torch, options.dtype)
    if device.type == "cpu" and dtype == torch.bfloat16:
        dtype = torch.float32  # bf16 on CPU is slow and not what the tests compare against
    try:
        pipe = Krea2Pipeline.from_pretrained(str(folder), dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"could not load a Krea2Pipeline from {folder}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    if options.offload == "none":
        pipe = pipe.to(device)
    elif device.type != "cuda":
        raise ModelUnavailable(
            f"DARKROOM_OFFLOAD={options.offload} needs a CUDA device (this one is {device})"
        )
    elif options.offload == "model":
        pipe.enable_model_cpu_offload(device=device)  # one component on the GPU at a time
    else:
        pipe.enable_sequential_cpu_offload(device=device)  # layer by layer: least memory
    apply_speed_options(pipe, options)
    return pipe


def apply_speed_options(pipe: Krea2Pipeline, options: EngineOptions) -> None:
    """The switchable speed work; each step is a diffusers or torch API, never a rewrite."""
    if options.fp8 == "storage":
        # Weights kept in fp8, computed in the pipeline's dtype: halves the transformer's memory.
        pipe.transformer.enable_layerwise_casting(
            storage_dtype=torch.float8_e4m3fn, compute_dtype=pipe.transformer.dtype
        )
    elif options.fp8 == "torchao":
        with process_settings_kept():
            try:
                from torchao.quantization import (
                    Float8DynamicActivationFloat8WeightConfig,
                    quantize_,
                )
            except ImportError as exc:
                raise ModelUnavailable(
                    "DARKROOM_FP8=torchao needs the fp8 extra: pip install 'darkroom[fp8]'"
                ) from exc
            quantize_(pipe.transformer, Float8DynamicActivationFloat8WeightConfig())
    if options.attention_backend:
        # Krea 2 always passes a text mask: pick a backend that accepts one (e.g. _native_cudnn).
        pipe.transformer.set_attention_backend(options.attention_backend)
    if options.vae_tiling:
        pipe.vae.enable_tiling()
    if options.compile_blocks:
        # Regional compilation: one compiled block reused 28 times keeps start-up short.
        pipe.transformer.compile_repeated_blocks(fullgraph=True)


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


def _one_image_at_a_time(transformer: torch.nn.Module, *, strip_padding: bool) -> None:
    """Run the transformer one image at a time, with `strip_padding` on that image's real text
    tokens only (compact text); without it, on the pipeline's padded, masked text block.

    The pipeline pads every prompt to a fixed block (645 tokens here) and masks the padding as
    attention keys; the model reads nothing else of it (per-token layers, key-padding masks, text
    positions all at the RoPE origin). Dropping the padded tokens is therefore the same
    computation up to rounding, on a sequence of 4096 + ~40 tokens instead of 4096 + 645 at 1K,
    and with no mask left, attention backends that refuse masks (flash) can run. One image at a
    time also makes each image's arithmetic independent of its batch, so a seed gives the same
    bytes alone or batched.
    """
    original = transformer.forward

    def run(**kwargs: Any) -> Any:
        hidden = kwargs["hidden_states"]
        text = kwargs["encoder_hidden_states"]
        mask = kwargs.get("encoder_attention_mask")
        positions = kwargs["position_ids"]
        outputs = []
        for i in range(hidden.shape[0]):
            one = dict(
                kwargs, hidden_states=hidden[i : i + 1], timestep=kwargs["timestep"][i : i + 1]
            )
            if mask is None or not strip_padding:
                one["encoder_hidden_states"] = text[i : i + 1]
                if mask is not None:
                    one["encoder_attention_mask"] = mask[i : i + 1]
            else:
                keep = mask[i].nonzero().squeeze(1)
                one["encoder_hidden_states"] = text[i : i + 1, keep]
                one["encoder_attention_mask"] = None
                # Text rows of the positions are all the origin: drop as many as were dropped.
                one["position_ids"] = positions[text.shape[1] - keep.numel() :]
            outputs.append(original(**one)[0])
        return (torch.cat(outputs),)

    wrap(transformer, "forward", run, original)


class Krea2Engine:
    """Generates batches with a loaded `Krea2Pipeline`; diffusers runs the denoising loop."""

    def __init__(self, pipe: Krea2Pipeline, models: Sequence[str], options: EngineOptions) -> None:
        self.pipe = pipe
        self.models = tuple(models)
        self.options = options
        # Not pipe.device: with CPU offload the weights rest on the CPU between uses.
        self.device = pick_device(options.device)
        if options.batch_invariant:
            _one_image_at_a_time(pipe.transformer, strip_padding=options.compact_text)
            decode_one_at_a_time(pipe.vae)
        if options.frame_convs_2d and options.offload != "sequential":
            # (Sequential offload moves each convolution's weights in a hook around its forward.)
            one_frame_convs_2d(pipe.vae)
        if self.device.type == "cpu":
            fast_cpu_norms(pipe.vae)
        tokenizer = pipe.tokenizer
        prefix_tokens = len(tokenizer(pipe.prompt_template_encode_prefix).input_ids)
        # The pipeline pads [prefix | prompt] to `max_sequence_length + start_idx - suffix`
        # tokens and drops `start_idx` tokens of prefix; size it so a prompt of exactly
        # PROMPT_TOKEN_LIMIT tokens reaches the text encoder whole (its default, 512, would cut).
        self.max_sequence_length = (
            PROMPT_TOKEN_LIMIT
            + prefix_tokens
            - pipe.prompt_template_encode_start_idx
            + pipe.prompt_template_encode_num_suffix_tokens
        )

    @classmethod
    def load(cls, model_path: str, models: Sequence[str], options: EngineOptions) -> Krea2Engine:
        return cls(load_pipeline(model_path, options), models, options)

    def warm_up(self, sizes: Sequence[tuple[int, int]], on_size: StepCallback) -> None:
        """Generate once at every size so kernels, autotuning and compilation happen now."""
        for done, (width, height) in enumerate(sizes, start=1):
            self.generate(Batch("warm-up", width, height, (Job("warm-up", "warm-up", 1),)), _ignore)
            on_size(done, len(sizes))

    def count_tokens(self, prompt: str) -> int:
        return len(self.pipe.tokenizer(prompt, add_special_tokens=False).input_ids)

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            return self._encode(prompts)

    def _encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text embeddings and mask for the pipeline, each prompt encoded alone at its own length.

        The pipeline's own encoding pads every prompt to `max_sequence_length` in the middle of
        its chat template; here the template is filled without padding (the encoder then runs on
        ~40 tokens instead of ~680 for a short prompt, and a prompt's embedding does not depend on
        its batch), and the batch is padded at the end, masked, to its longest prompt.
        """
        pipe = self.pipe
        drop = pipe.prompt_template_encode_start_idx
        suffix = pipe.prompt_template_encode_num_suffix_tokens
        parts = []
        for prompt in prompts:
            tokens = len(pipe.tokenizer(pipe.prompt_template_encode_prefix + prompt).input_ids)
            parts.append(
                pipe.encode_prompt(prompt=prompt, max_sequence_length=tokens - drop + suffix)
            )
        longest = max(embeds.shape[1] for embeds, _ in parts)
        first = parts[0][0]
        embeds = first.new_zeros((len(parts), longest, *first.shape[2:]))
        mask = torch.zeros((len(parts), longest), dtype=torch.bool, device=first.device)
        for i, (one_embeds, one_mask) in enumerate(parts):
            embeds[i, : one_embeds.shape[1]] = one_embeds[0]
            mask[i, : one_mask.shape[1]] = one_mask[0]
        return embeds, mask

    def generate(self, batch: Batch, on_step: StepCallback) -> list[Image]:
        """The batch's images, in its jobs' order. Under inference mode end to end: no autograd
        graph, so nothing of the text encoder's activations outlives its embeddings."""
        with torch.inference_mode():
            return self._generate(batch, on_step)

    def _generate(self, batch: Batch, on_step: StepCallback) -> list[Image]:
        for job in batch.jobs:
            if self.count_tokens(job.prompt) > PROMPT_TOKEN_LIMIT:
                raise PromptTooLong()
        steps = self.options.num_inference_steps
        generators = [
            torch.Generator(device=self.device).manual_seed(job.seed) for job in batch.jobs
        ]

        def step_end(_pipe: Any, step: int, _t: Any, _kwargs: dict[str, Any]) -> dict[str, Any]:
            on_step(step + 1, steps)
            return {}

        prompts = [job.prompt for job in batch.jobs]
        if self.options.compact_text:
            embeds, mask = self.encode(prompts)
            text: dict[str, Any] = {"prompt_embeds": embeds, "prompt_embeds_mask": mask}
        else:
            text = {"prompt": prompts}
        output = self.pipe(
            **text,
            width=batch.width,
            height=batch.height,
            num_inference_steps=steps,
            guidance_scale=self.options.guidance_scale,
            generator=generators,
            max_sequence_length=self.max_sequence_length,
            callback_on_step_end=step_end,
            output_type="pil",
        )
        images: list[Image] = list(output.images)
        return images
