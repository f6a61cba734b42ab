"""The staged GPU benchmark, in priority order: what darkroom's engine costs on a real H100/H200.

Every stage is timed, guarded (a time cap, a try/except) and written to OUT/results.jsonl as soon
as it ends, so a stage that fails or a run that is cut off still returns everything before it.
Order: what is cheap, certain and required first (plain diffusers vs darkroom at 1K and 2K, bf16
eager), then the attention backends, batching and a per-phase split (eager, robust), then what is
slow or irreversible (regional compile; torchao fp8, which rewrites the weights in place), and
last the worker in this process, which then runs the fastest engine the run reached (the
strictest overhead ratio). Random weights of the real architecture: no download.

First, here (where PyPI is reachable): `python bench/gpu_wheels.py` puts the wheels the GPU
machine lacks into .whl/core (diffusers, torchao) and .whl/svc (the worker's service
dependencies), resolved from pyproject.toml. Then one run on the device machine (kind
`nvidia-h200`, or `nvidia-h100-x1`: say which in the results' name), carrying `.whl`, with a
500 s limit and a 420 s budget, which leaves a warm machine's second try in a 15-minute lease
if the first dies early:

    set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1;
    P="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
       --target /tmp/site"; $P .whl/core/*.whl || exit 3; $P .whl/svc/*.whl || echo SVC-FAILED;
    export PYTHONPATH=/tmp/site; timeout 480 python3 bench/gpu_bench.py --budget-s 420
       --out $OUT 2>&1 | tee $OUT/log.txt

Commit what comes back (results.jsonl, summary.txt, log.txt) under
bench/results/DATE-GPU/, e.g. bench/results/2026-12-07-h100/, and quote its rows in
docs/performance.md.

Here, on a CPU, the same stages run on the tiny model in about six minutes (361 s on this 2-core
machine; fp8 and, past their GPU time caps, the 2K phases stop with an error):

    PYTHONPATH=src:. python bench/gpu_bench.py --config tiny --budget-s 900 --out /tmp/gpu-dry

and on a saved real-width model truncated in depth (bench/engine.py --save-truncated DIR), a
stage or two at a time: at the real widths a CPU takes ~20 s per denoising step even at a
quarter of each side (smoke 48 s, pair-1K 540 s on this machine), so the whole run is hours:

    PYTHONPATH=src:. python bench/gpu_bench.py --model-dir DIR --quick --slower 20 \
        --only smoke,gqa --budget-s 3000 --out /tmp/gpu-dry-real

`--quick` runs every stage at a quarter of each side with one timed repeat: the test suite's dry
run (tests/engine/test_benchmark.py), which keeps the script from rotting between GPU runs.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import io
import itertools
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]  # darkroom is a src layout: no install needed

import torch  # noqa: E402

from bench.engine import (  # noqa: E402
    TransformerClock,
    full_size_pipeline,
    transformer_flops,
    unwrapped,
)
from darkroom.contract import Quality, pixel_size  # noqa: E402
from darkroom.engine.base import Batch, Job  # noqa: E402
from darkroom.engine.krea2 import EngineOptions, Krea2Engine, load_pipeline  # noqa: E402
from darkroom.engine.speed import quantize_blocks_fp8, uncompile  # noqa: E402
from darkroom.engine.tiny import build_tiny_pipeline  # noqa: E402
from darkroom.engine.wrappers import without_darkroom_wrappers  # noqa: E402

MODELS = ("krea-2-turbo",)
PROMPT = "a lighthouse on a cliff above a stormy sea at dusk"


def _noop(_done: int, _total: int) -> None:
    return None


class StageTimeout(Exception):
    pass


def _alarm(_signum: int, _frame: Any) -> None:
    raise StageTimeout("stage ran past its time cap")


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.perf_counter()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.results = self.out / "results.jsonl"
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.cuda = self.device.type == "cuda"
        self.rows: list[dict[str, Any]] = []
        self.pipe: Any = None
        self.engine: Krea2Engine | None = None
        self.reference: dict[str, Any] = {}  # bf16 images by quality, for fp8's drift
        self.best_backend: str | None = None
        self.broken: set[str] = set()
        self.keep = 0.0  # seconds the running stage must leave to the stages after it
        self.clock: TransformerClock | None = None  # time inside the transformer's calls
        self.transformer_s = 0.0  # the transformer's mean seconds per run in the last `runs`

    # -- bookkeeping -------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        """Seconds this stage may still use: the budget less what later stages are promised."""
        return self.args.budget_s - self.elapsed() - self.keep

    def record(self, stage: str, **fields: Any) -> None:
        row = {"stage": stage, "t": round(self.elapsed(), 1), **fields}
        self.rows.append(row)
        line = json.dumps(row, default=str)
        print(line, flush=True)
        with self.results.open("a") as f:
            f.write(line + "\n")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def peak_gib(self) -> float | None:
        return round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.cuda else None

    def stage(
        self, name: str, estimate_s: float, fn: Callable[[], None], needs: str = "", keep: float = 0
    ) -> None:
        if needs and needs in self.broken:
            self.record(name, skipped=f"{needs} failed earlier")
            return
        estimate_s, keep = estimate_s * self.args.slower, keep * self.args.slower
        self.keep = keep
        if self.left() < estimate_s:
            self.record(name, skipped=f"needs ~{estimate_s:.0f} s, {self.left():.0f} s left")
            return
        cap = int(max(30, min(self.left() + 30, 3 * estimate_s)))
        signal.alarm(cap)
        start = time.perf_counter()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        try:
            fn()
            status = "ok"
        except Exception as exc:  # one stage's failure must not lose the others
            status = f"{type(exc).__name__}: {str(exc)[:400]}"
            self.broken.add(name)
            self.record(name, error=status, traceback=traceback.format_exc()[-2500:])
        finally:
            signal.alarm(0)
            self.keep = 0.0
        self.record(f"{name}:end", status=status, seconds=round(time.perf_counter() - start, 1),
                    peak_gib=self.peak_gib())  # fmt: skip

    # -- measuring ---------------------------------------------------------------------------
    def runs(self, fn: Callable[[], Any], repeats: int) -> tuple[float, float, list[float]]:
        """(first call s, median of the next `repeats` s, samples): the first call warms up.
        The transformer's mean seconds over those repeats are left in `transformer_s`."""
        times = []
        inside = 0.0
        repeats = 1 if self.args.quick else repeats
        for i in range(1 + repeats):
            self.sync()
            if i == 1 and self.clock is not None:
                inside = self.clock.seconds
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        if self.clock is not None:
            self.transformer_s = (self.clock.seconds - inside) / max(1, repeats)
        return times[0], statistics.median(times[1:]), [round(t, 4) for t in times]

    def size(self, quality: str) -> tuple[int, int]:
        width, height = pixel_size("1:1", Quality(quality))
        if self.args.quick:  # a quarter of each side: the same code paths, a sixteenth the work
            return width // 4, height // 4
        return width, height

    def ours(self, quality: str, engine: Krea2Engine | None = None, seed: int = 1) -> list[Any]:
        width, height = self.size(quality)
        engine = engine or self.engine
        assert engine is not None
        return engine.generate(Batch(MODELS[0], width, height, (Job("b", PROMPT, seed),)), _noop)

    def plain(self, quality: str) -> None:
        width, height = self.size(quality)
        with unwrapped(self.pipe):
            self.pipe(prompt=PROMPT, width=width, height=height, num_inference_steps=8,
                      guidance_scale=0.0, generator=torch.Generator(self.device).manual_seed(1))  # fmt: skip

    def text_tokens(self) -> tuple[int, int]:
        pipe = self.pipe
        plain = (
            512
            - pipe.prompt_template_encode_num_suffix_tokens
            + len(pipe.tokenizer(pipe.prompt_template_encode_suffix).input_ids)
        )
        assert self.engine is not None
        with torch.no_grad():
            ours = int(self.engine.encode([PROMPT])[1].sum())
        return plain, ours

    def tflops(self, quality: str, text: int, seconds: float) -> float | None:
        """Counted transformer FLOPs over `seconds`, to three significant figures."""
        if seconds <= 0:
            return None
        width, height = self.size(quality)
        flops = transformer_flops(self.pipe.transformer.config, width, height, text)
        return float(f"{flops / seconds / 1e12:.3g}")

    def new_lengths(self, quality: str) -> list[float]:
        """Seconds for prompts of lengths not seen before: what a per-shape plan cache (cuDNN
        SDPA builds one per sequence length) or a recompile costs the first task of a length."""
        width, height = self.size(quality)
        assert self.engine is not None
        times = []
        for words in (3, 17, 41):
            prompt = " ".join(["lighthouse"] * words) + f" {len(self.rows)}"
            batch = Batch(MODELS[0], width, height, (Job("n", prompt, 5),))
            self.sync()
            start = time.perf_counter()
            self.engine.generate(batch, _noop)
            self.sync()
            times.append(round(time.perf_counter() - start, 4))
        return times

    def time_ours(self, label: str, quality: str, repeats: int, **extra: Any) -> float:
        first, median, samples = self.runs(lambda: self.ours(quality), repeats)
        _, text = self.text_tokens()
        self.record(label, quality=quality, first_s=round(first, 3), s_per_image=round(median, 4),
                    transformer_s=round(self.transformer_s, 4),
                    tflops=self.tflops(quality, text, self.transformer_s), samples=samples,
                    peak_gib=self.peak_gib(), **extra)  # fmt: skip
        return median


def default_attention(pipe: Any) -> None:
    """Back to torch's SDPA as diffusers picks it. `reset_attention_backend` alone is not
    enough: `set_attention_backend` also makes its backend the process's active one, which
    processors without a backend of their own then use, so every later "native" figure would
    be the last backend tried (and a masked call to a flash one would fail)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    pipe.transformer.reset_attention_backend()
    _AttentionBackendRegistry.set_active_backend(AttentionBackendName.NATIVE)


# -- stages ----------------------------------------------------------------------------------
def env(s: Run) -> None:
    def version(name: str) -> str | None:
        try:
            from importlib.metadata import version as v

            return v(name)
        except Exception:
            return None

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if s.cuda else None,
        **{
            n: version(n)
            for n in (
                "diffusers",
                "transformers",
                "huggingface-hub",
                "accelerate",
                "torchao",
                "triton",
                "tokenizers",
                "safetensors",
            )
        },
        "cpu_count": os.cpu_count(),
    }
    if s.cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                    gpu_mem_gib=round(props.total_memory / 2**30, 1), sms=props.multi_processor_count)  # fmt: skip
        with contextlib.suppress(Exception):
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem,power.draw,"
                 "temperature.gpu,memory.used", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()  # fmt: skip
    s.record("env", **info)
    if not s.cuda:
        return
    # The two ceilings the achieved TFLOP/s are read against (METHOD.md): bf16 and fp8 GEMMs.
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    _, t, _ = s.runs(lambda: torch.mm(a, b), 10)
    s.record("ceiling", bf16_mm_tflops=round(2 * n**3 / t / 1e12, 1))
    with contextlib.suppress(Exception):
        a8, b8 = a.to(torch.float8_e4m3fn), b.t().contiguous().t().to(torch.float8_e4m3fn)
        one = torch.ones((), device="cuda")
        _, t8, _ = s.runs(lambda: torch._scaled_mm(a8, b8, one, one, out_dtype=torch.bfloat16), 10)
        s.record("ceiling", fp8_scaled_mm_tflops=round(2 * n**3 / t8 / 1e12, 1))


def build(s: Run) -> None:
    start = time.perf_counter()
    if s.args.model_dir:
        # A saved pipeline folder (real weights, or a truncated real-width model) through the
        # worker's own loader: straight onto the device, norms in fp32 as from_pretrained keeps.
        dtype = "bfloat16" if s.cuda else "float32"
        s.pipe = load_pipeline(s.args.model_dir, EngineOptions(device=str(s.device), dtype=dtype))
    elif s.args.config == "full":
        # Random init happens on the GPU (`with device:`); the norms stay fp32, as from_pretrained
        # leaves the real weights (`_keep_in_fp32_modules`).
        s.pipe = full_size_pipeline(s.device)
    else:
        s.pipe = build_tiny_pipeline().to(s.device)
        s.pipe.set_progress_bar_config(disable=True)
    s.sync()
    built = time.perf_counter() - start
    s.engine = Krea2Engine(s.pipe, MODELS, EngineOptions(device=str(s.device)))
    s.clock = TransformerClock(s.pipe.transformer, s.device)
    params = {n: round(sum(p.numel() for p in getattr(s.pipe, n).parameters()) / 1e9, 3)
              for n in ("transformer", "text_encoder", "vae")}  # fmt: skip
    plain_text, ours_text = s.text_tokens()
    s.record("build", seconds=round(built, 1), params_b=params, text_tokens_plain=plain_text,
             text_tokens_ours=ours_text,
             allocated_gib=round(torch.cuda.memory_allocated() / 2**30, 2) if s.cuda else None)  # fmt: skip


def smoke(s: Run) -> None:
    import numpy as np

    start = time.perf_counter()
    [pixels] = s.ours("1K")
    s.sync()
    s.record("smoke", first_image_s=round(time.perf_counter() - start, 2),
             size=[pixels.shape[1], pixels.shape[0]],
             pixel_std=round(float(pixels.std()), 2), distinct=len(np.unique(pixels)))  # fmt: skip
    if pixels.std() == 0:
        raise RuntimeError("the image is one flat colour: NaN or dead latents")


def pair(s: Run, quality: str, repeats: int) -> None:
    plain_text, ours_text = s.text_tokens()
    p_first, p_med, p_samples = s.runs(lambda: s.plain(quality), repeats)
    p_inside = s.transformer_s
    p_peak = s.peak_gib()
    last: list[Any] = []
    o_first, o_med, o_samples = s.runs(lambda: last.append(s.ours(quality)[0]), repeats)
    o_inside = s.transformer_s
    s.reference[quality] = last[-1]
    # TFLOP/s: each side's counted transformer FLOPs over the transformer's own time.
    s.record("pair", quality=quality, size=s.size(quality),
             plain_s=round(p_med, 4), darkroom_s=round(o_med, 4), ratio=round(o_med / p_med, 3),
             plain_transformer_s=round(p_inside, 4), darkroom_transformer_s=round(o_inside, 4),
             plain_tflops=s.tflops(quality, plain_text, p_inside),
             darkroom_tflops=s.tflops(quality, ours_text, o_inside),
             plain_first_s=round(p_first, 2), darkroom_first_s=round(o_first, 2),
             plain_samples=p_samples, darkroom_samples=o_samples, plain_peak_gib=p_peak,
             peak_gib=s.peak_gib())  # fmt: skip


def backends(s: Run) -> None:
    """darkroom's compact text has no mask, so every SDPA kernel is open to it. `native` lets
    torch choose (recent torch prefers cuDNN on sm90 when cuDNN >= 9.9)."""
    results: dict[str, float] = {}
    s.record("backend:new-lengths", backend="native", quality="1K",
             new_lengths_s=s.new_lengths("1K"))  # fmt: skip
    candidates = ["_native_cudnn", "_native_flash"] if s.cuda else ["_native_math"]
    for name in candidates:
        try:
            s.pipe.transformer.set_attention_backend(name)
            results[name] = s.time_ours("backend", "1K", 2, backend=name)
            s.record("backend:new-lengths", backend=name, quality="1K",
                     new_lengths_s=s.new_lengths("1K"))  # fmt: skip
        except Exception as exc:
            s.record("backend", backend=name, error=f"{type(exc).__name__}: {str(exc)[:300]}")
    default_attention(s.pipe)
    pairs = [r for r in s.rows if r["stage"] == "pair" and r.get("quality") == "1K"]
    native = pairs[-1]["darkroom_s"] if pairs else None
    best = min(results, key=results.__getitem__) if results else None
    if best and native and results[best] < 0.98 * native:
        s.best_backend = best
        s.pipe.transformer.set_attention_backend(best)
        s.time_ours("backend", "2K", 1, backend=best)
    s.record("backend:choice", native_1k_s=native, best=s.best_backend or "native")


def gqa(s: Run) -> None:
    """diffusers copies the 12 key/value heads to 48 for every block; with compact text there is
    no mask, and `native_gqa` lets the kernel read them as they are. Same picture, and the time
    against the copy, with the backend chosen above."""
    import numpy as np
    from diffusers.models.transformers.transformer_krea2 import Krea2AttnProcessor

    from darkroom.engine.attention import GroupedKVAttnProcessor

    backend = s.best_backend or "native"
    copied = s.time_ours("gqa", "1K", 2, heads="copied to 48", backend=backend)
    reference = np.asarray(s.ours("1K")[0], np.int16)
    s.pipe.transformer.set_attn_processor(GroupedKVAttnProcessor())
    try:
        if s.best_backend:
            s.pipe.transformer.set_attention_backend(s.best_backend)
        native = s.time_ours("gqa", "1K", 2, heads="grouped (enable_gqa)", backend=backend)
        difference = np.abs(np.asarray(s.ours("1K")[0], np.int16) - reference)
        s.record("gqa:choice", copied_s=round(copied, 4), grouped_s=round(native, 4),
                 ratio=round(native / copied, 3), max_abs_levels=int(difference.max()),
                 backend=backend)  # fmt: skip
    finally:
        s.pipe.transformer.set_attn_processor(Krea2AttnProcessor())
        if s.best_backend:
            s.pipe.transformer.set_attention_backend(s.best_backend)


def service(s: Run) -> None:
    """The worker in this process (claim, generate on its engine thread, NudeNet check, PNG,
    store, complete) against the engine alone, same tasks, alternating rounds."""
    from bench import service_overhead

    args = argparse.Namespace(quality="1K", size="1:1", rounds=2)
    jobs = [Job(f"t{i}", f"benchmark prompt number {i}", 1000 + i) for i in range(4)]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        service_overhead.in_process(s.engine, jobs, args)
    text = buffer.getvalue()
    (s.out / "service.log").write_text(text)
    ratio = re.search(r"worker / engine:\s*([\d.]+)", text)
    rounds = re.findall(r"round \d+: engine\s+([\d.]+) s, worker\s+([\d.]+) s", text)
    blocks = s.pipe.transformer.transformer_blocks
    compiled_now = any(getattr(b, "_compiled_call_impl", None) is not None for b in blocks)
    fp8_now = "Float8" in type(blocks[0].ff.up.weight).__name__
    s.record("service", worker_over_engine=float(ratio.group(1)) if ratio else None,
             rounds=rounds, phases_ms=service_overhead.worker_phases(text),
             engine=f"{s.best_backend or 'native'} attention, "
                    f"{'compiled ' if compiled_now else ''}{'fp8' if fp8_now else 'bf16'}")  # fmt: skip


def batching(s: Run) -> None:
    """Four 1K tasks in one engine call: batch-invariant (darkroom's default: one image at a
    time inside the batch) against one batched transformer call; and same seed, same bytes."""
    default_attention(s.pipe)  # the batched call needs a mask-taking kernel
    try:
        _batching(s)
    finally:
        if s.best_backend:
            s.pipe.transformer.set_attention_backend(s.best_backend)


def _batching(s: Run) -> None:
    prompts = [PROMPT, "a red fox in the snow",
               "portrait of an old man with a grey beard, studio lighting, 85mm lens, film grain",
               "a bowl of ramen"]  # fmt: skip
    jobs = tuple(Job(f"b{i}", p, 100 + i) for i, p in enumerate(prompts))
    width, height = s.size("1K")
    batch = Batch(MODELS[0], width, height, jobs)
    alone = Batch(MODELS[0], width, height, jobs[:1])
    assert s.engine is not None
    last: list[Any] = []
    _, inv, _ = s.runs(lambda: last.append(s.engine.generate(batch, _noop)), 1)
    in_batch = last[-1][0].tobytes()
    first = s.engine.generate(alone, _noop)[0].tobytes()
    again = s.engine.generate(alone, _noop)[0].tobytes()
    s.record("batching:invariant", images=len(jobs), s_per_image=round(inv / len(jobs), 4),
             same_seed_same_bytes=first == again, alone_equals_in_batch=first == in_batch)  # fmt: skip
    with unwrapped(s.pipe):
        batched = Krea2Engine(
            s.pipe, MODELS, EngineOptions(device=str(s.device), batch_invariant=False)
        )
        _, bat, _ = s.runs(lambda: batched.generate(batch, _noop), 1)
    s.record("batching", images=len(jobs), invariant_s_per_image=round(inv / len(jobs), 4),
             batched_s_per_image=round(bat / len(jobs), 4), speedup=round(inv / bat, 3),
             same_seed_same_bytes=first == again, alone_equals_in_batch=first == in_batch)  # fmt: skip


def uncompiled_on_failure(stage: Callable[[Run], None]) -> Callable[[Run], None]:
    """`stage`, which leaves no half-compiled blocks behind if it fails or is cut off by its
    cap: the stages after it would recompile them inside their own caps."""

    def run(s: Run) -> None:
        try:
            stage(s)
        except BaseException:
            s.record(f"{stage.__name__}:reset", blocks=uncompile(s.pipe.transformer))
            raise

    return run


@uncompiled_on_failure
def compiled(s: Run) -> None:
    import torch._dynamo

    s.pipe.transformer.compile_repeated_blocks(fullgraph=True)
    try:
        s.time_ours("compile", "1K", 3, note="first_s includes the static compile",
                    backend=s.best_backend or "native")  # fmt: skip
    except StageTimeout:
        raise
    except Exception as exc:  # e.g. a graph break with the chosen backend: retry with torch's
        if not s.best_backend:
            raise
        s.record("compile", backend=s.best_backend, error=f"{type(exc).__name__}: {str(exc)[:300]}")
        s.best_backend = None
        default_attention(s.pipe)
        torch._dynamo.reset()
        s.time_ours(
            "compile", "1K", 3, note="first_s includes the static compile", backend="native"
        )
    if s.left() > 70:
        s.time_ours("compile", "2K", 1, note="first_s includes the recompile to dynamic shapes")
        s.time_ours("compile", "1K", 2, note="the dynamic graph, as compact text meets it")
        s.record("compile:new-lengths", quality="1K", new_lengths_s=s.new_lengths("1K"))
    stats = torch._dynamo.utils.counters["stats"]
    s.record("compile:dynamo", unique_graphs=stats.get("unique_graphs"),
             calls_captured=stats.get("calls_captured"), backend=s.best_backend or "native")  # fmt: skip


@uncompiled_on_failure
def fp8(s: Run) -> None:
    import numpy as np

    uncompile(s.pipe.transformer)  # back to eager before the rewrite
    start = time.perf_counter()
    # The worker's own: the 28 blocks' linears, per-row scales, torch's settings kept.
    quantize_blocks_fp8(s.pipe.transformer)
    s.sync()
    s.record("fp8:quantize", seconds=round(time.perf_counter() - start, 2),
             allocated_gib=round(torch.cuda.memory_allocated() / 2**30, 2) if s.cuda else None)  # fmt: skip
    s.time_ours("fp8", "1K", 2, mode="eager")
    if "1K" in s.reference:
        ours = np.asarray(s.ours("1K")[0], np.int16)
        ref = np.asarray(s.reference["1K"], np.int16)
        drift = np.abs(ours - ref)
        s.record("fp8:drift", mean_abs_levels=round(float(drift.mean()), 2),
                 max_abs_levels=int(drift.max()), same_seed=True,
                 note="against bf16; random weights: a sanity figure, not a quality measure")  # fmt: skip
    if s.left() < 75:
        s.record("fp8:compile", skipped=f"{s.left():.0f} s left")
        return
    s.pipe.transformer.compile_repeated_blocks(fullgraph=True)
    s.time_ours("fp8", "1K", 3, mode="compiled", note="first_s includes the compile")
    if s.left() > 60:
        s.time_ours("fp8", "2K", 1, mode="compiled", note="first_s includes the recompile")


def phases(s: Run) -> None:
    """Where one image's time goes: text encoding, the 8 steps, decode + PNG-free postprocess,
    and the 2K VAE decode through diffusers' 3D convolutions, darkroom's 2D ones, and tiled (time
    and peak memory)."""
    assert s.engine is not None
    for quality in ("1K", "2K"):
        stamps: list[float] = []

        def on_step(_done: int, _total: int, stamps: list[float] = stamps) -> None:
            s.sync()
            stamps.append(time.perf_counter())

        s.sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            s.engine.encode([PROMPT])
        s.sync()
        encode = time.perf_counter() - t0
        width, height = s.size(quality)
        s.sync()
        t0 = time.perf_counter()
        s.engine.generate(Batch(MODELS[0], width, height, (Job("p", PROMPT, 1),)), on_step)
        s.sync()
        end = time.perf_counter()
        steps = [b - a for a, b in itertools.pairwise(stamps)]
        s.record("phases", quality=quality, encode_s=round(encode, 4),
                 to_first_step_end_s=round(stamps[0] - t0, 4),
                 step_s=round(statistics.median(steps), 4) if steps else None,
                 after_last_step_s=round(end - stamps[-1], 4), total_s=round(end - t0, 4))  # fmt: skip
    vae = s.pipe.vae
    width, height = s.size("2K")
    z = torch.randn(
        1, vae.config.z_dim, 1, height // 8, width // 8, device=s.device, dtype=vae.dtype
    )
    decode = type(vae).decode  # the class's own: darkroom's one-at-a-time wrapper set aside
    try:
        # diffusers' 3D convolutions, then darkroom's 2D ones (engine/vae.py), then tiled.
        for convs, tiled in (("3d", False), ("2d", False), ("2d", True)):
            (vae.enable_tiling if tiled else vae.disable_tiling)()
            if s.cuda:
                torch.cuda.reset_peak_memory_stats()
            plain = without_darkroom_wrappers(s.pipe) if convs == "3d" else contextlib.nullcontext()
            with plain, torch.no_grad():
                _, t, _ = s.runs(lambda: decode(vae, z), 1)
            s.record("vae2k", convs=convs, tiled=tiled, decode_s=round(t, 4), peak_gib=s.peak_gib())
    finally:
        vae.disable_tiling()


def summary(s: Run) -> None:
    lines = [f"device {s.device}, config {s.args.config}, {s.elapsed():.0f} s"]
    for r in s.rows:
        if r["stage"].endswith(":end") and r.get("status") == "ok":
            continue
        keep = {k: v for k, v in r.items()
                if k not in ("traceback", "samples", "plain_samples", "darkroom_samples")}  # fmt: skip
        lines.append(json.dumps(keep, default=str))
    text = "\n".join(lines)
    (s.out / "summary.txt").write_text(text + "\n")
    print("\n==== summary ====\n" + text, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=["full", "tiny"], default="full")
    parser.add_argument("--model-dir", default="",
                        help="run on a saved pipeline folder (real weights, or the truncated "
                        "real-width model of bench/engine.py --save-truncated) instead of "
                        "--config's random weights")  # fmt: skip
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="no stage starts that would end past this many seconds")  # fmt: skip
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-out"))
    parser.add_argument("--only", default="",
                        help="comma-separated stage names to run (env and build always run)")  # fmt: skip
    parser.add_argument("--slower", type=float, default=1.0,
                        help="this machine is this many times slower than the H200 the stages' "
                        "estimates and time caps are for (a CPU dry run of real widths: ~20)")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="every stage at a quarter of each side and one timed repeat: the CPU "
                        "dry run that keeps this script working between GPU runs")  # fmt: skip
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _alarm)
    # If the run is about to be killed, the stacks say where it was stuck.
    faulthandler.dump_traceback_later(args.budget_s + 60, exit=False)
    s = Run(args)
    s.record("start", argv=sys.argv[1:])
    # (name, estimate in seconds on an H200, function, stage it needs, seconds kept for later)
    plan: list[tuple[str, float, Callable[[], None], str, float]] = [
        ("env", 15, lambda: env(s), "", 0),
        ("build", 60, lambda: build(s), "", 0),
        ("smoke", 15, lambda: smoke(s), "build", 0),
        ("pair-1K", 25, lambda: pair(s, "1K", 3), "build", 0),
        ("pair-2K", 60, lambda: pair(s, "2K", 1), "build", 0),
        ("backends", 45, lambda: backends(s), "build", 0),
        ("gqa", 25, lambda: gqa(s), "build", 0),
        ("batching", 35, lambda: batching(s), "build", 0),
        ("phases", 20, lambda: phases(s), "build", 0),
        # The slow, irreversible end: compile keeps time for fp8's eager run and the service,
        # fp8 for the service, which then runs the fastest engine (the strictest ratio).
        ("compile", 100, lambda: compiled(s), "build", 60),
        ("fp8", 30, lambda: fp8(s), "build", 40),
        ("service", 40, lambda: service(s), "build", 0),
    ]
    only = {n for n in args.only.split(",") if n} | {"env", "build"} if args.only else None
    for name, estimate, fn, needs, keep in plan:
        if only is None or name in only:
            s.stage(name, estimate, fn, needs, keep)
    summary(s)


if __name__ == "__main__":
    main()
