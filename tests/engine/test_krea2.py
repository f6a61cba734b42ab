"""The Krea 2 engine on the tiny pipeline: real classes, real loader, seeds, the 640-token limit."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLQwenImage, Krea2Pipeline, Krea2Transformer2DModel
from PIL.Image import Image
from transformers import Qwen3VLModel

from darkroom.contract import PROMPT_TOKEN_LIMIT
from darkroom.engine.base import Batch, Job, ModelUnavailable, PromptTooLong, to_image
from darkroom.engine.krea2 import EngineOptions, Krea2Engine, load_pipeline
from darkroom.engine.tiny import build_tiny_pipeline, ensure_tiny_model

MODELS = ("krea-2-turbo",)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Krea2Engine:
    return Krea2Engine.load(str(tiny_model_dir), MODELS, EngineOptions())


def png_digest(image: Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def assert_same_up_to_rounding(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Two fp32 computations of the same decode whose sums run in another order (another kernel,
    another CPU). Each output is a chain of thousands of rounded sums: the differences seen are
    up to 4e-5 of the output's largest magnitude (7e-6 of 0.24 here, 1.02e-5 on an AMD EPYC),
    so allow 1e-3 of it; a wrong computation (another time slice, a missing bias) differs by
    the output's own scale."""
    assert actual.shape == expected.shape
    scale = expected.abs().max().item()
    assert scale > 0, "an all-zero output proves nothing"
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-3 * scale)


def generate(engine: Krea2Engine, *jobs: Job, size: tuple[int, int] = (1024, 1024)) -> list[Image]:
    pixels = engine.generate(Batch("krea-2-turbo", *size, jobs), lambda _d, _t: None)
    return [to_image(one) for one in pixels]


def test_tiny_pipeline_round_trips_through_the_real_loader(tmp_path: Path) -> None:
    folder = ensure_tiny_model(tmp_path / "tiny")
    assert (folder / "model_index.json").is_file()
    pipe = load_pipeline(str(folder), EngineOptions(device="cpu"))
    assert type(pipe) is Krea2Pipeline
    assert isinstance(pipe.transformer, Krea2Transformer2DModel)
    assert isinstance(pipe.vae, AutoencoderKLQwenImage)
    assert isinstance(pipe.text_encoder, Qwen3VLModel)
    assert pipe.config.is_distilled is True
    built = build_tiny_pipeline()
    for name, tensor in built.transformer.state_dict().items():
        assert torch.equal(tensor, pipe.transformer.state_dict()[name]), name
    # A second call finds the same version in place and does not rebuild.
    stamp = (folder / "model_index.json").stat().st_mtime_ns
    ensure_tiny_model(folder)
    assert (folder / "model_index.json").stat().st_mtime_ns == stamp


def test_images_have_the_requested_pixels(engine: Krea2Engine) -> None:
    batch = Batch("krea-2-turbo", 1344, 768, (Job("t", "a fox", 1), Job("u", "a cat", 2)))
    pixels = engine.generate(batch, lambda _d, _t: None)
    assert [(p.shape, p.dtype) for p in pixels] == [((768, 1344, 3), np.uint8)] * 2
    assert to_image(pixels[0]).size == (1344, 768)


def test_pixels_are_the_bytes_of_diffusers_pil_output(tiny_model_dir: Path) -> None:
    """The engine converts to 8 bits itself (on the device, where there is one): the same
    arithmetic as diffusers' PIL output, so the same bytes."""
    options = EngineOptions(compact_text=False, batch_invariant=False)
    engine = Krea2Engine.load(str(tiny_model_dir), MODELS, options)
    [ours] = engine.generate(Batch("krea-2-turbo", 512, 384, (Job("t", "a fox", 3),)), _ignore)
    theirs = plain_diffusers(engine.pipe, "a fox", (512, 384), 3, engine.max_sequence_length)
    assert ours.tobytes() == theirs.tobytes()


def plain_diffusers(
    pipe: Krea2Pipeline, prompt: str, size: tuple[int, int], seed: int, max_sequence_length: int
) -> Image:
    """The pipeline's own PIL image at the turbo settings, as diffusers alone makes it."""
    [image] = pipe(
        prompt=prompt,
        width=size[0],
        height=size[1],
        num_inference_steps=8,
        guidance_scale=0.0,
        generator=torch.Generator().manual_seed(seed),
        max_sequence_length=max_sequence_length,
    ).images
    return image


def _ignore(_done: int, _total: int) -> None:
    return None


def test_text_is_cut_to_lengths_known_on_the_host(
    engine: Krea2Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each image's real text tokens are sliced by lengths the engine knows: no read of a device
    tensor (a GPU sync) per image per step. With guidance the negative prompt's mask is read
    once per generation, not at every step, and the picture is the padded pipeline's."""
    reads: list[str] = []
    for name in ("tolist", "item", "nonzero"):
        real = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *a: Any, _name: str = name, _real: Any = real) -> Any:
            reads.append(_name)
            return _real(self, *a)

        monkeypatch.setattr(torch.Tensor, name, counted)
    prompts = (Job("t", "a cat", 1), Job("u", "a lighthouse on a cliff above the sea", 2))
    batch = Batch("krea-2-turbo", 256, 256, prompts)
    engine.generate(batch, _ignore)
    assert reads == []
    guided = [
        Krea2Engine(
            load_pipeline(engine_dir(engine), EngineOptions()),
            MODELS,
            EngineOptions(guidance_scale=1.0, compact_text=compact),
        )
        for compact in (True, False)
    ]
    pictures = []
    for one in guided:
        reads.clear()
        pictures.append([p.astype(np.int16) for p in one.generate(batch, _ignore)])
        assert reads == (["tolist", "tolist"] if one.options.compact_text else []), reads
    for compact, padded in zip(*pictures, strict=True):
        difference = np.abs(compact - padded)
        assert difference.max() <= 1 and (difference > 0).mean() < 1e-3


def engine_dir(engine: Krea2Engine) -> str:
    return str(engine.pipe.config["_name_or_path"])


def test_progress_reports_every_step(engine: Krea2Engine) -> None:
    steps: list[tuple[int, int]] = []
    engine.generate(
        Batch("krea-2-turbo", 768, 1344, (Job("t", "p", 3),)), lambda d, t: steps.append((d, t))
    )
    assert steps == [(i, 8) for i in range(1, 9)]


def test_same_seed_same_bytes_alone_and_in_a_batch(engine: Krea2Engine) -> None:
    alone = png_digest(generate(engine, Job("a", "a red fox", 1234))[0])
    again = png_digest(generate(engine, Job("a", "a red fox", 1234))[0])
    batched = generate(engine, Job("b", "a blue whale", 99), Job("a", "a red fox", 1234))
    assert alone == again
    assert png_digest(batched[1]) == alone
    assert png_digest(batched[0]) != alone
    other_seed = png_digest(generate(engine, Job("a", "a red fox", 1235))[0])
    assert other_seed != alone


def prompt_of(engine: Krea2Engine, tokens: int) -> str:
    # "Z" is absent from the tiny tokenizer's training text, so no merge joins two of them.
    prompt = "Z" * tokens
    assert engine.count_tokens(prompt) == tokens
    return prompt


def test_prompt_limit_is_640_model_tokens_and_all_reach_the_encoder(engine: Krea2Engine) -> None:
    seen: dict[str, Any] = {}

    def capture(_module: torch.nn.Module, _args: Any, kwargs: dict[str, Any]) -> None:
        seen["input_ids"] = kwargs["input_ids"]
        seen["mask"] = kwargs["attention_mask"]

    z_id = engine.pipe.tokenizer.convert_tokens_to_ids("Z")
    handle = engine.pipe.text_encoder.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        generate(engine, Job("t", prompt_of(engine, PROMPT_TOKEN_LIMIT), 1), size=(768, 1344))
    finally:
        handle.remove()
    assert int((seen["input_ids"][0] == z_id).sum()) == PROMPT_TOKEN_LIMIT
    with pytest.raises(PromptTooLong):
        generate(engine, Job("t", prompt_of(engine, PROMPT_TOKEN_LIMIT + 1), 1))


def test_missing_folder_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="does not exist"):
        load_pipeline(str(tmp_path / "nope"), EngineOptions())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailable, match=r"model_index\.json"):
        load_pipeline(str(tmp_path / "empty"), EngineOptions())


def test_missing_hub_weights_offline_fail_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelUnavailable) as caught:
        load_pipeline("krea/Krea-2-Turbo", EngineOptions())
    message = str(caught.value)
    assert "DARKROOM_MODEL_PATH" in message
    assert "hf download krea/Krea-2-Turbo" in message


def suffix_tokens(engine: Krea2Engine) -> int:
    pipe = engine.pipe
    return len(pipe.tokenizer(pipe.prompt_template_encode_suffix).input_ids)


def test_compact_text_is_the_plain_pipelines_computation(
    engine: Krea2Engine, tiny_model_dir: Path
) -> None:
    """Without the padded text block the transformer sees only real tokens and draws the same
    picture as plain diffusers (which pads every prompt to the block), up to float rounding."""
    seen: list[tuple[int, bool]] = []

    def capture(_module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        text = kwargs.get("encoder_hidden_states", args[0] if args else None)
        seen.append((text.shape[1], kwargs.get("attention_mask") is None))

    prompt = "a red fox in the snow"
    pipe = engine.pipe
    real = len(pipe.tokenizer(pipe.prompt_template_encode_prefix + prompt).input_ids)
    expected = real + suffix_tokens(engine) - pipe.prompt_template_encode_start_idx
    handle = pipe.transformer.text_fusion.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        [ours] = generate(engine, Job("t", prompt, 42))
    finally:
        handle.remove()
    assert seen and all(entry == (expected, True) for entry in seen), seen

    plain = load_pipeline(str(tiny_model_dir), EngineOptions())
    theirs = plain_diffusers(plain, prompt, (1024, 1024), 42, engine.max_sequence_length)
    a = torch.from_numpy(np.asarray(ours).astype(np.int16))
    b = torch.from_numpy(np.asarray(theirs).astype(np.int16))
    assert int((a - b).abs().max()) <= 1
    assert float((a != b).float().mean()) < 0.01


def test_padded_text_when_compact_text_is_off(tiny_model_dir: Path) -> None:
    engine = Krea2Engine.load(
        str(tiny_model_dir), MODELS, EngineOptions(compact_text=False, batch_invariant=False)
    )
    lengths: list[int] = []
    handle = engine.pipe.transformer.text_fusion.register_forward_pre_hook(
        lambda _m, args: lengths.append(args[0].shape[1])
    )
    try:
        generate(engine, Job("t", "a red fox", 1), size=(768, 1344))
    finally:
        handle.remove()
    # The pipeline's block: the prompt padded to max_length, the suffix after it, the prefix cut.
    pipe = engine.pipe
    block = engine.max_sequence_length - pipe.prompt_template_encode_num_suffix_tokens
    assert set(lengths) == {block + suffix_tokens(engine)}


def test_cpu_vae_norms_compute_what_diffusers_does(tiny_model_dir: Path) -> None:
    from darkroom.engine.vae import fast_cpu_norms

    pipe = load_pipeline(str(tiny_model_dir), EngineOptions())
    torch.manual_seed(0)
    latents = torch.randn(1, 4, 1, 40, 56)
    with torch.no_grad():
        before = pipe.vae.decode(latents).sample
        assert fast_cpu_norms(pipe.vae) > 0
        after = pipe.vae.decode(latents).sample
    assert_same_up_to_rounding(after, before)
    # Each norm alone, both layouts, with a non-trivial gain and bias.
    from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageRMS_norm

    for channel_first, shape in ((True, (2, 6, 3, 5, 7)), (False, (2, 9, 6))):
        norm = QwenImageRMS_norm(6, channel_first=channel_first, images=False, bias=True)
        with torch.no_grad():
            norm.gamma.uniform_(0.5, 2.0)
            norm.bias.uniform_(-1.0, 1.0)
        x = torch.randn(shape)
        x[0, 0] = 0.0  # an all-zero vector: the epsilon path
        expected = norm(x)
        wrapper = torch.nn.Sequential(norm)
        fast_cpu_norms(wrapper)
        assert torch.allclose(norm(x), expected, atol=1e-6, rtol=1e-5)


def test_one_frame_decodes_through_2d_convolutions_to_the_same_picture(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the VAE's causal convolutions as 2D ones, a picture's decode runs no 3D convolution
    and gives what diffusers' decode gives, up to float rounding; a video's frames after the
    first (a cache of earlier frames) still take diffusers' path."""
    from darkroom.engine.vae import one_frame_convs_2d

    pipe = load_pipeline(str(tiny_model_dir), EngineOptions())
    torch.manual_seed(0)
    latents = torch.randn(1, 4, 1, 40, 56)
    conv3d_calls = 0
    real_conv3d = torch.nn.functional.conv3d

    def counting_conv3d(*args: Any, **kwargs: Any) -> torch.Tensor:
        nonlocal conv3d_calls
        conv3d_calls += 1
        return real_conv3d(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv3d", counting_conv3d)
    with torch.no_grad():
        before = pipe.vae.decode(latents).sample
        assert conv3d_calls > 0
        assert one_frame_convs_2d(pipe.vae) > 0
        conv3d_calls = 0
        after = pipe.vae.decode(latents).sample
        assert conv3d_calls == 0
        assert_same_up_to_rounding(after, before)
        # Three frames: the second and third read the first's cache, through 3D convolutions.
        video = torch.randn(1, 4, 3, 16, 16)
        assert pipe.vae.decode(video).sample.shape[2] > 1
        assert conv3d_calls > 0


def test_the_engine_decodes_with_2d_convolutions_unless_told_not_to(tiny_model_dir: Path) -> None:
    def wrapped(engine: Krea2Engine) -> int:
        return sum(
            "forward" in module.__dict__
            for module in engine.pipe.vae.modules()
            if type(module).__name__ == "QwenImageCausalConv3d"
        )

    batch = Batch("krea-2-turbo", 1024, 1024, (Job("t", "a cat", 5),))
    engines = [
        Krea2Engine.load(str(tiny_model_dir), ("krea-2-turbo",), EngineOptions(frame_convs_2d=on))
        for on in (True, False)
    ]
    assert wrapped(engines[0]) > 0 and wrapped(engines[1]) == 0
    pictures = [np.asarray(e.generate(batch, lambda *_: None)[0], dtype=np.int16) for e in engines]
    # Rounding moves a pixel by one level at most, and few of them.
    difference = np.abs(pictures[0] - pictures[1])
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3


def test_weights_load_straight_onto_the_device(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing offloaded, diffusers places each component as it reads it: no copy of the
    whole pipeline staged on the host first (35 GB in bf16) and moved after."""
    placements: list[object] = []
    real = Krea2Pipeline.from_pretrained.__func__  # type: ignore[attr-defined]

    def spy(cls: type, *args: Any, **kwargs: Any) -> Any:
        placements.append(kwargs.get("device_map"))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(Krea2Pipeline, "from_pretrained", classmethod(spy))
    moved: list[object] = []
    monkeypatch.setattr(Krea2Pipeline, "to", lambda self, *a, **k: moved.append(a) or self)
    pipe = load_pipeline(str(tiny_model_dir), EngineOptions(device="cpu"))
    assert placements == ["cpu"] and moved == []
    assert {p.device.type for p in pipe.transformer.parameters()} == {"cpu"}


def test_the_vae_makes_each_2d_weight_once(tiny_model_dir: Path) -> None:
    """The causal convolution's last time slice is made contiguous once, not at every decode,
    and made again when the weight moves or changes."""
    from darkroom.engine.vae import _LastSlice

    pipe = load_pipeline(str(tiny_model_dir), EngineOptions())
    conv = next(m for m in pipe.vae.modules() if type(m).__name__ == "QwenImageCausalConv3d")
    last = _LastSlice()
    first = last.of(conv.weight)
    assert first.is_contiguous() and torch.equal(first, conv.weight[:, :, -1])
    assert last.of(conv.weight) is first
    conv.weight.data = conv.weight.data.clone() * 2
    assert torch.equal(last.of(conv.weight), conv.weight[:, :, -1])
    assert last.of(conv.weight) is not first


def test_an_out_of_memory_failure_empties_the_cache(
    engine: Krea2Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    emptied: list[bool] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    monkeypatch.setattr(engine, "device", torch.device("cuda"))

    def out_of_memory(*_a: Any, **_k: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(engine, "_generate", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        engine.generate(Batch("krea-2-turbo", 256, 256, (Job("t", "a cat", 1),)), _ignore)
    assert emptied == [True]


def test_a_vae_speed_up_that_matches_nothing_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """A diffusers release that renamed the VAE's modules leaves the slow path: said at load."""
    from darkroom.engine.krea2 import _say_if_nothing_matched
    from darkroom.engine.vae import one_frame_convs_2d

    renamed = torch.nn.Sequential(torch.nn.Conv3d(2, 2, 3))  # no QwenImageCausalConv3d inside
    with caplog.at_level("WARNING", logger="darkroom.engine.krea2"):
        _say_if_nothing_matched(one_frame_convs_2d(renamed), "QwenImageCausalConv3d")
    assert "matched no QwenImageCausalConv3d" in caplog.text
