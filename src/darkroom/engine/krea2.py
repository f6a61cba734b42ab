"""Krea 2 Turbo through diffusers' `Krea2Pipeline`: loading (hub id or folder) and generation.

The switchable speed work applied at load lives in `speed`, the options in `options`."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import Krea2Pipeline

from darkroom.contract import PROMPT_TOKEN_LIMIT
from darkroom.engine.base import Batch, Job, ModelUnavailable, PromptTooLong, StepCallback
from darkroom.engine.hub import hub_offline, is_hub_id
from darkroom.engine.options import EngineOptions
from darkroom.engine.speed import apply_speed_options, is_compile_failure, uncompile
from darkroom.engine.vae import decode_one_at_a_time, fast_cpu_norms, one_frame_convs_2d
from darkroom.engine.wrappers import wrap

if TYPE_CHECKING:
    from darkroom.engine.base import Pixels

log = logging.getLogger(__name__)

__all__ = ["EngineOptions", "Krea2Engine", "load_pipeline", "pick_device", "resolve_weights"]


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
    dtype = getattr(torch, options.dtype or ("float32" if device.type == "cpu" else "bfloat16"))
    # Nothing offloaded: each component's weights are read straight onto the device. Loading on
    # the CPU and moving after would stage all of them (35 GB in bf16) in host memory first.
    direct = options.offload == "none" and device.index in (None, 0)
    placement = {"device_map": device.type} if direct else {}
    try:
        pipe = Krea2Pipeline.from_pretrained(str(folder), dtype=dtype, **placement)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"could not load a Krea2Pipeline from {folder}: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    if options.offload == "none":
        if not direct:
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


class TextLengths:
    """Each prompt's count of real text tokens, known on the host, for the transformer's calls.

    The engine knows the lengths of the prompts it encoded and hands them in through the
    pipeline's `attention_kwargs`. Under guidance the prompt's and the negative prompt's masks
    share the transformer's calls and one shape, so no lengths are handed, and each mask is read
    once when first seen, not at every step of every image: a read of a device tensor waits for
    the GPU, and a data-dependent shape inside the step loop would also rule out capturing it as
    a CUDA graph. Every mask stripped here is the engine's own, padded at the end only.
    """

    KEY = "darkroom_text_lengths"

    def __init__(self) -> None:
        self._seen: list[tuple[torch.Tensor, list[int]]] = []

    def of(self, mask: torch.Tensor, handed: list[int] | None) -> list[int]:
        if handed is not None and len(handed) == mask.shape[0]:
            return handed
        for known, lengths in self._seen:
            if known is mask:
                return lengths
        lengths = [int(n) for n in mask.sum(dim=1).tolist()]
        self._seen = [*self._seen[-3:], (mask, lengths)]
        return lengths

    def forget(self) -> None:
        self._seen = []


def _one_image_at_a_time(
    transformer: torch.nn.Module, lengths: TextLengths, *, strip_padding: bool
) -> None:
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
        extra = dict(kwargs.get("attention_kwargs") or {})
        handed = extra.pop(TextLengths.KEY, None)
        kwargs["attention_kwargs"] = extra or None
        hidden = kwargs["hidden_states"]
        text = kwargs["encoder_hidden_states"]
        mask = kwargs.get("encoder_attention_mask")
        positions = kwargs["position_ids"]
        real = lengths.of(mask, handed) if mask is not None and strip_padding else None
        outputs = []
        for i in range(hidden.shape[0]):
            one = dict(
                kwargs, hidden_states=hidden[i : i + 1], timestep=kwargs["timestep"][i : i + 1]
            )
            if real is None:
                one["encoder_hidden_states"] = text[i : i + 1]
                if mask is not None:
                    one["encoder_attention_mask"] = mask[i : i + 1]
            else:
                one["encoder_hidden_states"] = text[i : i + 1, : real[i]]
                one["encoder_attention_mask"] = None
                # Text rows of the positions are all the origin: drop as many as were dropped.
                one["position_ids"] = positions[text.shape[1] - real[i] :]
            outputs.append(original(**one)[0])
        return (torch.cat(outputs),)

    wrap(transformer, "forward", run, original)


def wait_while_exists(path: str) -> None:
    """Hold the engine's thread while `path` exists (Settings.tiny_pause_file)."""
    while Path(path).exists():
        time.sleep(0.02)


class Krea2Engine:
    """Generates batches with a loaded `Krea2Pipeline`; diffusers runs the denoising loop."""

    def __init__(self, pipe: Krea2Pipeline, models: Sequence[str], options: EngineOptions) -> None:
        self.pipe = pipe
        self.models = tuple(models)
        self.options = options
        # Not pipe.device: with CPU offload the weights rest on the CPU between uses.
        self.device = pick_device(options.device)
        self.compiled = options.compile_blocks
        self._text_lengths = TextLengths()
        if options.batch_invariant:
            _one_image_at_a_time(
                pipe.transformer, self._text_lengths, strip_padding=options.compact_text
            )
            decode_one_at_a_time(pipe.vae)
        if options.frame_convs_2d and options.offload != "sequential":
            # (Sequential offload moves each convolution's weights in a hook around its forward.)
            _say_if_nothing_matched(one_frame_convs_2d(pipe.vae), "QwenImageCausalConv3d")
        if self.device.type == "cpu":
            _say_if_nothing_matched(fast_cpu_norms(pipe.vae), "QwenImageRMS_norm")
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
            return self._encode(prompts)[:2]

    def _encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Text embeddings and mask for the pipeline, each prompt encoded alone at its own length,
        and each prompt's count of real tokens.

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
        lengths = [embeds.shape[1] for embeds, _ in parts]
        longest = max(lengths)
        first = parts[0][0]
        embeds = first.new_zeros((len(parts), longest, *first.shape[2:]))
        mask = torch.zeros((len(parts), longest), dtype=torch.bool, device=first.device)
        for i, (one_embeds, one_mask) in enumerate(parts):
            embeds[i, : one_embeds.shape[1]] = one_embeds[0]
            mask[i, : one_mask.shape[1]] = one_mask[0]
        return embeds, mask, lengths

    def generate(self, batch: Batch, on_step: StepCallback) -> list[Pixels]:
        """The batch's images as (height, width, 3) uint8 arrays, in its jobs' order.

        Under inference mode end to end: no autograd graph, so nothing of the text encoder's
        activations outlives its embeddings. The images leave the device as 8-bit pixels,
        converted there, in one copy; building PIL images is the caller's, off this thread.
        If regional compilation fails at its first image (a graph break under `fullgraph`, a
        backend that cannot compile), the blocks run eagerly from then on instead: logged,
        never fatal. After running out of GPU memory, the allocator's cache is emptied so the
        next batch does not meet the same fragmentation.
        """
        try:
            with torch.inference_mode():
                return self._generate(batch, on_step)
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise
        except Exception as exc:
            if not (self.compiled and is_compile_failure(exc)):
                raise
            undone = uncompile(self.pipe.transformer)
            self.compiled = False
            log.warning(
                "regional compilation failed; the transformer's %d blocks run eagerly from now "
                "on (%s: %s)",
                undone,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            with torch.inference_mode():
                return self._generate(batch, on_step)
        finally:
            self._text_lengths.forget()

    def _generate(self, batch: Batch, on_step: StepCallback) -> list[Pixels]:
        for job in batch.jobs:
            if self.count_tokens(job.prompt) > PROMPT_TOKEN_LIMIT:
                raise PromptTooLong()
        steps = self.options.num_inference_steps
        generators = [
            torch.Generator(device=self.device).manual_seed(job.seed) for job in batch.jobs
        ]
        pause = self.options.pause_file

        def step_end(_pipe: Any, step: int, _t: Any, _kwargs: dict[str, Any]) -> dict[str, Any]:
            on_step(step + 1, steps)
            if pause and step == 0:
                wait_while_exists(pause)
            return {}

        prompts = [job.prompt for job in batch.jobs]
        extra: dict[str, Any] = {}
        if self.options.compact_text and self.options.guidance_scale > 0:
            # Guidance: the negative prompt (diffusers' default, empty) encoded with the prompts,
            # so both share one padded length, which the pipeline's text positions assume. Their
            # masks differ at the same shape: each is read once on the host (TextLengths).
            n = len(prompts)
            embeds, mask, _ = self._encode([*prompts, *[""] * n])
            text: dict[str, Any] = {
                "prompt_embeds": embeds[:n],
                "prompt_embeds_mask": mask[:n],
                "negative_prompt_embeds": embeds[n:],
                "negative_prompt_embeds_mask": mask[n:],
            }
        elif self.options.compact_text:
            embeds, mask, lengths = self._encode(prompts)
            text = {"prompt_embeds": embeds, "prompt_embeds_mask": mask}
            # No negative prompt shares the transformer's calls: the lengths are these.
            extra = {"attention_kwargs": {TextLengths.KEY: lengths}}
        else:
            text = {"prompt": prompts}
        output = self.pipe(
            **text,
            **extra,
            width=batch.width,
            height=batch.height,
            num_inference_steps=steps,
            guidance_scale=self.options.guidance_scale,
            generator=generators,
            max_sequence_length=self.max_sequence_length,
            callback_on_step_end=step_end,
            output_type="pt",
        )
        return self._to_pixels(output.images)

    def _to_pixels(self, images: torch.Tensor) -> list[Pixels]:
        """(B, 3, H, W) floats in [0, 1] to B (H, W, 3) uint8 arrays: the arithmetic of
        diffusers' PIL output (float32, x 255, rounded half to even), done on the device, then
        one copy of the whole batch to (pinned) host memory."""
        pixels = (images.float() * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        if pixels.device.type == "cuda":
            host = torch.empty(pixels.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(pixels, non_blocking=True)
            torch.cuda.current_stream(pixels.device).synchronize()
        else:
            host = pixels.contiguous()
        return [one.numpy() for one in host]


def _say_if_nothing_matched(patched: int, class_name: str) -> None:
    """The VAE's faster forms find diffusers' modules by class name: a diffusers release that
    renamed them would silently leave the slower path. Said loudly, at load."""
    if patched == 0:
        log.warning(
            "VAE speed-up matched no %s module: this diffusers release renamed or changed it, "
            "and decoding runs diffusers' own (slower) code; pin diffusers to the constrained "
            "version (deploy/constraints.txt)",
            class_name,
        )
