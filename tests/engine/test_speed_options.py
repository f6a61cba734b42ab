"""The switchable speed work, applied to the tiny pipeline on the CPU (timing is bench/'s job)."""

from __future__ import annotations

import inspect
import logging
import operator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from darkroom.attention_backends import MASK_REFUSING_BACKENDS
from darkroom.contract import SIZES, Quality
from darkroom.engine.base import Batch, Job, ModelUnavailable
from darkroom.engine.factory import warm_up_sizes
from darkroom.engine.krea2 import EngineOptions, Krea2Engine, load_pipeline
from darkroom.engine.speed import (
    apply_speed_options,
    fp8_block_filter,
    process_settings_kept,
    quantize_blocks_fp8,
    uncompile,
)
from darkroom.engine.tiny import build_tiny_pipeline
from darkroom.settings import Settings


def test_fp8_storage_tiling_and_backend_still_generate(tiny_model_dir: Path) -> None:
    options = EngineOptions(fp8="storage", vae_tiling=True, attention_backend="_native_math")
    pipe = load_pipeline(str(tiny_model_dir), options)
    linear = next(m for m in pipe.transformer.modules() if isinstance(m, torch.nn.Linear))
    assert linear.weight.dtype == torch.float8_e4m3fn
    assert pipe.vae.use_tiling
    # The backend is this pipeline's: the process's default, which others use, is untouched.
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    assert _AttentionBackendRegistry.get_active_backend()[0] == AttentionBackendName.NATIVE
    engine = Krea2Engine(pipe, ("krea-2-turbo",), options)
    [image] = engine.generate(
        Batch("krea-2-turbo", 768, 1344, (Job("t", "p", 1),)), lambda *_: None
    )
    assert image.shape == (1344, 768, 3)


def test_warm_up_visits_every_size_once(tiny_model_dir: Path) -> None:
    engine = Krea2Engine.load(str(tiny_model_dir), ("krea-2-turbo",), EngineOptions())
    seen: list[tuple[int, int]] = []
    original = engine.generate

    def spy(batch: Batch, on_step):  # type: ignore[no-untyped-def]
        seen.append((batch.width, batch.height))
        return original(batch, on_step)

    engine.generate = spy  # type: ignore[method-assign]
    reports: list[tuple[int, int]] = []
    engine.warm_up([(768, 1344), (1344, 768)], lambda d, t: reports.append((d, t)))
    assert seen == [(768, 1344), (1344, 768)]
    assert reports == [(1, 2), (2, 2)]


@pytest.mark.slow
def test_regional_compile_matches_eager_and_takes_prompts_of_any_length(
    tiny_model_dir: Path,
) -> None:
    """`compile_repeated_blocks(fullgraph=True)` on the real block classes (torch inductor on the
    CPU here, as on CUDA there): no graph break, the same pixels as eager up to a level of
    rounding, and compact text's varying sequence lengths recompile into a dynamic graph
    instead of failing. Compiling takes ~20 s here; timing it on a GPU is bench/'s job."""
    eager = Krea2Engine.load(str(tiny_model_dir), ("krea-2-turbo",), EngineOptions())
    compiled = Krea2Engine.load(
        str(tiny_model_dir), ("krea-2-turbo",), EngineOptions(compile_blocks=True)
    )
    prompts = ("a cat", "a lighthouse on a cliff above a stormy sea at dusk, oil on canvas", "dog")
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for prompt in prompts:
        batch = Batch("krea-2-turbo", 512, 512, (Job("t", prompt, 7),))
        [ours] = compiled.generate(batch, lambda *_: None)
        [reference] = eager.generate(batch, lambda *_: None)
        difference = np.abs(np.asarray(ours, np.int16) - np.asarray(reference, np.int16))
        assert difference.max() <= 2, prompt
    # Compiled for real: dynamo made graphs (the first length, then one dynamic in it).
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs
    [again] = compiled.generate(batch, lambda *_: None)
    assert again.tobytes() == ours.tobytes()  # the same seed, the same bytes, compiled too


def test_generation_runs_under_inference_mode_end_to_end(tiny_model_dir: Path) -> None:
    """No autograd graph anywhere: the text encoder's activations die with its embeddings."""
    engine = Krea2Engine.load(str(tiny_model_dir), ("krea-2-turbo",), EngineOptions())
    modes: dict[str, list[bool]] = {"text_encoder": [], "transformer": [], "vae.decoder": []}
    for name, seen in modes.items():
        operator.attrgetter(name)(engine.pipe).register_forward_pre_hook(
            lambda *_, seen=seen: seen.append(torch.is_inference_mode_enabled())
        )
    engine.generate(Batch("krea-2-turbo", 256, 256, (Job("t", "a cat", 1),)), lambda *_: None)
    assert all(modes.values()) and all(all(seen) for seen in modes.values()), modes
    embeds, mask = engine.encode(["a lighthouse at dusk"])
    assert embeds.grad_fn is None and not embeds.requires_grad
    assert embeds.is_inference() and mask.is_inference()


def test_a_library_cannot_change_torchs_process_settings_for_good() -> None:
    """What torchao's quantize_ does to the process (TF32 matmuls, coordinate-descent tuning)
    is undone when the engine's fp8 step ends."""
    import torch._inductor.config as inductor

    before = (torch.get_float32_matmul_precision(), inductor.coordinate_descent_tuning)
    with process_settings_kept():
        torch.set_float32_matmul_precision("high")
        inductor.coordinate_descent_tuning = not before[1]
    assert (torch.get_float32_matmul_precision(), inductor.coordinate_descent_tuning) == before


def test_warm_up_pays_for_compilation_at_three_sizes_not_twenty() -> None:
    sizes = warm_up_sizes()
    contract = {dims for by_quality in SIZES.values() for dims in by_quality.values()}
    assert len(sizes) == len(set(sizes)) == 3 and set(sizes) <= contract
    assert sizes[:2] == [SIZES["1:1"][Quality.K1], SIZES["16:9"][Quality.K1]]
    assert sizes[2] == max(contract, key=lambda wh: wh[0] * wh[1])  # the largest buffers


def test_the_backends_said_to_refuse_masks_are_those_that_do() -> None:
    """MASK_REFUSING_BACKENDS against the installed diffusers: each backend whose code raises
    on a mask is listed, and no other."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    refusing = {
        name.value
        for name, function in _AttentionBackendRegistry._backends.items()
        if "`attn_mask` is not supported" in inspect.getsource(function)
    }
    assert refusing == MASK_REFUSING_BACKENDS


@pytest.mark.parametrize(
    "settings",
    [
        {"attention_backend": "_native_flash", "compact_text": False},
        {"attention_backend": "flash", "models": {"krea-2-turbo": {"compact_text": False}}},
        {"compact_text": False, "models": {"krea-2-turbo": {"attention_backend": "_flash_3"}}},
    ],
)
def test_a_backend_that_refuses_masks_needs_compact_text(settings: dict[str, Any]) -> None:
    """The padded text block is masked: a flash backend would kill the worker at its first
    image (the warm-up, on CUDA). Refused at start, with the reason."""
    with pytest.raises(ValueError, match="takes no attention mask"):
        Settings(**settings)
    Settings(**(settings | {"compact_text": True, "models": ["krea-2-turbo"]}))
    options = EngineOptions(attention_backend="_native_flash", compact_text=False)
    with pytest.raises(ModelUnavailable, match="takes no attention mask"):
        apply_speed_options(build_tiny_pipeline(), options)


def test_native_gqa_settings_say_what_it_needs() -> None:
    with pytest.raises(ValueError, match="native_gqa needs compact_text"):
        Settings(native_gqa=True, compact_text=False)
    with pytest.raises(ValueError, match="grouped key/value heads itself"):
        Settings(native_gqa=True, attention_backend="_native_cudnn")
    Settings(native_gqa=True, attention_backend="_native_flash")


def test_native_gqa_reads_the_key_value_heads_once(tiny_model_dir: Path) -> None:
    """With compact text and no mask, attention gets the key/value heads as they are, with
    `enable_gqa`, and draws what diffusers' copied heads draw, up to a level of rounding."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    batch = Batch("krea-2-turbo", 256, 256, (Job("t", "a cat", 3),))
    pictures = []
    for gqa in (True, False):
        options = EngineOptions(native_gqa=gqa)
        engine = Krea2Engine.load(str(tiny_model_dir), ("krea-2-turbo",), options)
        shapes: list[tuple[int, int, bool]] = []
        backend, function = _AttentionBackendRegistry.get_active_backend()

        def spy(query: torch.Tensor, key: torch.Tensor, *a: Any, **kw: Any) -> Any:
            shapes.append((query.shape[2], key.shape[2], kw.get("enable_gqa", False)))  # noqa: B023
            return function(query, key, *a, **kw)  # noqa: B023

        _AttentionBackendRegistry._backends[backend] = spy
        try:
            [image] = engine.generate(batch, lambda *_: None)
        finally:
            _AttentionBackendRegistry._backends[backend] = function
        # The blocks' attention has 2 query heads to 1 key/value head; the text fusion's 2 and 2.
        grouped = {s for s in shapes if s[0] != s[1] or s[2]}
        assert grouped == ({(2, 1, True)} if gqa else set()), shapes
        assert (2, 2, False) in shapes
        pictures.append(image.astype(np.int16))
    assert np.abs(pictures[0] - pictures[1]).max() <= 1


def test_a_failed_regional_compile_falls_back_to_eager_blocks(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A compile that fails at the first image (here a backend that refuses every graph; on a
    GPU, a graph break under fullgraph) costs a log line, not the worker."""
    import darkroom.engine.speed as speed

    def refuse(_graph: Any, _inputs: Any) -> Any:
        raise RuntimeError("this backend compiles nothing")

    monkeypatch.setattr(
        speed,
        "compile_blocks",
        lambda transformer: transformer.compile_repeated_blocks(fullgraph=True, backend=refuse),
    )
    engine = Krea2Engine.load(
        str(tiny_model_dir), ("krea-2-turbo",), EngineOptions(compile_blocks=True)
    )
    batch = Batch("krea-2-turbo", 256, 256, (Job("t", "a cat", 3),))
    steps: list[int] = []
    with caplog.at_level(logging.WARNING, logger="darkroom.engine.krea2"):
        [image] = engine.generate(batch, lambda done, _total: steps.append(done))
    assert "regional compilation failed" in caplog.text and not engine.compiled
    assert uncompile(engine.pipe.transformer) == 0  # nothing compiled is left
    eager = Krea2Engine.load(str(tiny_model_dir), ("krea-2-turbo",), EngineOptions())
    [expected] = eager.generate(batch, lambda *_: None)
    assert image.tobytes() == expected.tobytes()
    assert steps[-1] == 8


def test_fp8_quantizes_the_block_linears_only_with_per_row_scales(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torchao's fp8 matmuls need a Hopper GPU (and torchao's kernels its CUDA torch), so what
    they are given is checked here, against torchao's API as a stand-in module: the blocks'
    linears, with per-row scales; the modulation, text fusion and projection, input and final
    layers stay in bf16. Inside process_settings_kept, so torchao's global tuning does not
    outlive it."""
    import sys
    import types
    from dataclasses import dataclass

    import torch._inductor.config as inductor

    class PerRow:
        def __eq__(self, other: object) -> bool:
            return isinstance(other, PerRow)

    @dataclass
    class Float8DynamicActivationFloat8WeightConfig:
        granularity: Any = None

    calls: list[tuple[Any, Any]] = []

    def quantize_(model: Any, config: Any, filter_fn: Any = None) -> None:
        calls.append((config, filter_fn))
        inductor.coordinate_descent_tuning = True  # as the real one does

    quantization = types.ModuleType("torchao.quantization")
    quantization.PerRow = PerRow  # type: ignore[attr-defined]
    quantization.Float8DynamicActivationFloat8WeightConfig = (  # type: ignore[attr-defined]
        Float8DynamicActivationFloat8WeightConfig
    )
    quantization.quantize_ = quantize_  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchao", types.ModuleType("torchao"))
    monkeypatch.setitem(sys.modules, "torchao.quantization", quantization)
    transformer = build_tiny_pipeline().transformer
    before = inductor.coordinate_descent_tuning
    quantize_blocks_fp8(transformer)
    assert inductor.coordinate_descent_tuning == before
    [(config, filter_fn)] = calls
    assert filter_fn is fp8_block_filter
    assert config.granularity == PerRow()
    linears = [n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)]
    chosen = {n for n, m in transformer.named_modules() if fp8_block_filter(m, n)}
    assert chosen == {n for n in linears if n.startswith("transformer_blocks.")} != set()
    kept = set(linears) - chosen
    for boundary in ("time_mod_proj", "img_in", "txt_in", "final_layer", "text_fusion"):
        assert any(n.startswith(boundary) for n in kept), boundary
