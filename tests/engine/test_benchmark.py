"""The benchmarks measure what production runs: weights as from_pretrained leaves them, the
worker's speed options, diffusers' own hooks kept when darkroom's wrappers are set aside, the
text the transformer really computes on; and the staged GPU benchmark's CPU dry run."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from bench.engine import add_engine_options, as_loaded, engine_options, unwrapped
from diffusers import Krea2Transformer2DModel

from darkroom.engine.base import Batch, Job
from darkroom.engine.krea2 import EngineOptions, Krea2Engine, load_pipeline
from darkroom.engine.speed import apply_speed_options
from darkroom.engine.tiny import build_tiny_pipeline
from darkroom.engine.wrappers import WRAPPER_MARK

# Starts processes (`make unit` leaves it out).
pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[2]


def _fp32(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.dtype == torch.float32}


def test_built_weights_keep_fp32_exactly_where_from_pretrained_does(tiny_model_dir: Path) -> None:
    loaded = Krea2Transformer2DModel.from_pretrained(
        tiny_model_dir / "transformer", dtype=torch.bfloat16
    )
    built = as_loaded(build_tiny_pipeline().transformer.to(torch.bfloat16))
    assert _fp32(built) == _fp32(loaded) != set()
    assert any(p.dtype == torch.bfloat16 for p in built.parameters())


def test_the_benchmarks_speed_options_reach_the_engine() -> None:
    parser = argparse.ArgumentParser()
    add_engine_options(parser)
    args = parser.parse_args(
        ["--attention-backend", "_native_math", "--vae-tiling", "--fp8", "storage", "--padded-text"]
    )
    options = engine_options(args, torch.device("cpu"))
    assert (options.attention_backend, options.vae_tiling, options.fp8) == (
        "_native_math", True, "storage",
    )  # fmt: skip
    assert not options.compact_text
    pipe = build_tiny_pipeline()
    apply_speed_options(pipe, options)
    assert pipe.vae.use_tiling
    linear = next(m for m in pipe.transformer.modules() if isinstance(m, torch.nn.Linear))
    assert linear.weight.dtype == torch.float8_e4m3fn


def test_unwrapped_sets_aside_darkrooms_wrappers_and_keeps_diffusers_hooks(
    tiny_model_dir: Path,
) -> None:
    options = EngineOptions(fp8="storage")  # diffusers' layerwise-casting hooks on every layer
    pipe = load_pipeline(str(tiny_model_dir), options)
    hooked = {
        name: module.__dict__["forward"]
        for name, module in pipe.transformer.named_modules()
        if "forward" in module.__dict__
    }
    assert hooked, "diffusers installs its casting hooks as instance-level forwards"
    engine = Krea2Engine(pipe, ("krea-2-turbo",), options)
    ours = pipe.transformer.__dict__["forward"]
    assert hasattr(ours, WRAPPER_MARK)
    with unwrapped(pipe):
        inside = {
            name: module.__dict__["forward"]
            for name, module in pipe.transformer.named_modules()
            if "forward" in module.__dict__
        }
        assert inside == hooked
        image = pipe(prompt="a cat", width=128, height=128, num_inference_steps=2,
                     guidance_scale=0.0, output_type="pil").images[0]  # fmt: skip
    assert image.size == (128, 128)
    assert pipe.transformer.__dict__["forward"] is ours
    assert engine.generate(Batch("krea-2-turbo", 128, 128, (Job("t", "a", 1),)), lambda *_: None)


@pytest.mark.parametrize(("compact", "padded"), [(True, False), (False, True)])
def test_the_transformer_gets_padded_text_only_without_compact_text(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, compact: bool, padded: bool
) -> None:
    lengths: list[int] = []
    real_forward = Krea2Transformer2DModel.forward

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        lengths.append(kwargs["encoder_hidden_states"].shape[1])
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(Krea2Transformer2DModel, "forward", spy)
    options = EngineOptions(compact_text=compact)
    engine = Krea2Engine.load(str(tiny_model_dir), ("krea-2-turbo",), options)
    engine.generate(Batch("krea-2-turbo", 128, 128, (Job("t", "a cat", 1),)), lambda *_: None)
    real = int(engine.encode(["a cat"])[1].sum())
    assert lengths and all((n > real) is padded for n in lengths), (lengths, real)
    if padded:
        assert min(lengths) >= 512  # diffusers' fixed block: what --padded-text's FLOPs count


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_staged_gpu_benchmark_dry_runs_on_the_tiny_model(tmp_path: Path) -> None:
    """bench/gpu_bench.py on the CPU, every stage at quarter size: it must not rot between the
    rare GPU runs. fp8 (torchao, CUDA only) is the one stage allowed to fail here."""
    out = tmp_path / "gpu"
    done = subprocess.run(
        [sys.executable, "bench/gpu_bench.py", "--config", "tiny", "--quick",
         "--budget-s", "800", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=880,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    ends = {r["stage"].removesuffix(":end"): r for r in rows if r["stage"].endswith(":end")}
    expected = ["env", "build", "smoke", "pair-1K", "pair-2K", "backends", "gqa", "batching",
                "phases", "compile", "fp8", "service"]  # fmt: skip
    assert list(ends) == expected, rows
    failed = {name for name, row in ends.items() if row.get("status") != "ok"}
    assert failed <= {"fp8"}, [ends[n] for n in failed]
    [pair] = [r for r in rows if r["stage"] == "pair" and r["quality"] == "1K"]
    assert pair["darkroom_transformer_s"] > 0 and pair["darkroom_tflops"] > 0
    decodes = {(r["convs"], r["tiled"]) for r in rows if r["stage"] == "vae2k"}
    assert decodes == {("3d", False), ("2d", False), ("2d", True)}, rows
    [gqa] = [r for r in rows if r["stage"] == "gqa:choice"]
    assert gqa["max_abs_levels"] <= 1 and gqa["grouped_s"] > 0, gqa
    assert (out / "summary.txt").is_file()


def test_the_gpu_wheel_list_comes_from_pyproject() -> None:
    """bench/gpu_wheels.py asks pip for the GPU machine's wheels from pyproject.toml itself:
    every runtime and engine dependency the GPU image lacks is asked for, with pyproject's own
    pins (torchao's, which must match the CUDA torch), and none the image has."""
    import tomllib

    from bench.gpu_wheels import CORE, GPU_IMAGE, canonical, project_requirements

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    asked = project_requirements()
    names = {canonical(r.split(">")[0].split("=")[0].split("[")[0]) for r in asked}
    image = {canonical(r.split("=")[0]) for r in GPU_IMAGE}
    assert not names & image
    assert names >= CORE and {"fastapi", "sqlalchemy", "nudenet"} <= names
    assert set(project["optional-dependencies"]["fp8"]) <= set(asked)  # torchao==0.18.0 as pinned
    extras = project["optional-dependencies"]
    every = [*project["dependencies"], *extras["server"], *extras["engine"]]
    for requirement in every:
        name = canonical(requirement.split(">")[0].split("=")[0].split("[")[0])
        assert name in image or requirement in asked or name == "darkroom", requirement
