"""The switchable speed work, applied to the tiny pipeline on the CPU (timing is bench/'s job)."""

from __future__ import annotations

import operator
from pathlib import Path

import numpy as np
import pytest
import torch

from darkroom.contract import SIZES, Quality
from darkroom.engine.base import Batch, Job
from darkroom.engine.factory import warm_up_sizes
from darkroom.engine.krea2 import (
    EngineOptions,
    Krea2Engine,
    load_pipeline,
    process_settings_kept,
)


def test_fp8_storage_tiling_and_backend_still_generate(tiny_model_dir: Path) -> None:
    options = EngineOptions(fp8="storage", vae_tiling=True, attention_backend="_native_math")
    pipe = load_pipeline(str(tiny_model_dir), options)
    linear = next(m for m in pipe.transformer.modules() if isinstance(m, torch.nn.Linear))
    assert linear.weight.dtype == torch.float8_e4m3fn
    assert pipe.vae.use_tiling
    engine = Krea2Engine(pipe, ("krea-2-turbo",), options)
    [image] = engine.generate(
        Batch("krea-2-turbo", 768, 1344, (Job("t", "p", 1),)), lambda *_: None
    )
    assert image.size == (768, 1344)


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
