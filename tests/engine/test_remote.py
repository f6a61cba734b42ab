"""The remote engine held to each flavour's real contract (tests/engine/fake_engines.py serves
SGLang Diffusion's and vLLM-Omni's documented behaviours): what each is sent, the picture
checked, refusals, retries and an engine that does not answer."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from darkroom.contract import FailureCode
from darkroom.engine.base import Batch, EngineError, EngineRefused, EngineUnavailable, Job
from darkroom.engine.remote import BACKOFF_S, RemoteImageEngine
from darkroom.settings import ModelConfig, RemoteEngine
from tests.engine.fake_engines import SERVED, FakeEngine, serving

OPEN: list[RemoteImageEngine] = []


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr("darkroom.engine.remote.BACKOFF_S", tuple(0.0 for _ in BACKOFF_S))
    yield
    while OPEN:
        OPEN.pop().close()


def engine_for(
    fake: FakeEngine, flavor_override: str | None = None, **remote: Any
) -> RemoteImageEngine:
    flavor = flavor_override or fake.flavor
    config = ModelConfig(remote=RemoteEngine(url=fake.url, flavor=flavor, **remote))
    engine = RemoteImageEngine("krea-2-turbo", config, steps=8)
    OPEN.append(engine)
    return engine


def batch(*seeds: int, width: int = 1344, height: int = 768, prompt: str = "a fox") -> Batch:
    jobs = tuple(Job(f"t{seed}", prompt, seed) for seed in seeds)
    return Batch("krea-2-turbo", width, height, jobs)


def run(engine: RemoteImageEngine, work: Batch) -> list[Any]:
    steps: list[int] = []
    out = list(engine.generate(work, lambda done, total: steps.append(done)))
    assert all(0 <= s < 100 for s in steps)  # never 100 before the result
    return out


def test_sglang_is_sent_its_own_conventions() -> None:
    with serving("sglang") as fake:
        engine = engine_for(fake)
        [image] = run(engine, batch(7))
        [sent] = fake.received
    assert image.size == (1344, 768) and image.mode == "RGB"
    assert sent["response_format"] == "b64_json"  # §1.4: url is refused here
    assert sent["output_format"] == "png"  # §1.2: JPEG otherwise
    assert sent["seed"] == 7  # §1.2: the default would be the constant 1024
    assert sent["guidance_scale"] == 1.0  # §4: SGLang's "no guidance"
    assert sent["num_inference_steps"] == 8
    assert (sent["width"], sent["height"], sent["size"]) == (1344, 768, "1344x768")
    assert sent["n"] == 1 and "model" not in sent  # SGLang does not check it


def test_vllm_omni_is_sent_turbo_steps_and_zero_guidance() -> None:
    with serving("vllm-omni") as fake:
        run(engine_for(fake), batch(7))
        run(engine_for(fake, served_model=SERVED), batch(8))
        first, second = fake.received
    assert (first["num_inference_steps"], first["guidance_scale"]) == (8, 0.0)  # §2.2: 28, 4.5
    assert "model" not in first  # §2.2: a name other than the served one is a 400
    assert second["model"] == SERVED


@pytest.mark.parametrize("flavor", ["sglang", "vllm-omni"])
def test_the_same_seed_gives_the_same_picture_and_another_another(flavor: str) -> None:
    with serving(flavor) as fake:
        engine = engine_for(fake, concurrency=3)
        a, b, again = run(engine, batch(1, 2, 1))
    assert a.tobytes() == again.tobytes() != b.tobytes()


def test_a_picture_of_another_size_fails_its_job_only() -> None:
    with serving("sglang", script=["ok", ("size", 1024, 1024)]) as fake:
        engine = engine_for(fake)  # one in flight: the script's order is the jobs'
        good, bad = run(engine, batch(1, 2))
    assert good.size == (1344, 768)
    assert isinstance(bad, EngineError) and "1024x1024" in str(bad)


def test_a_refusal_fails_the_task_with_its_code_and_is_not_retried() -> None:
    refusal = ("status", 400, {"detail": "Prompt refused by the content policy"})
    with serving("sglang", script=[refusal]) as fake:
        [refused] = run(engine_for(fake), batch(1))
        assert len(fake.received) == 1
    assert isinstance(refused, EngineRefused)
    assert refused.code is FailureCode.CONTENT_POLICY_VIOLATION
    with serving("vllm-omni", script=[("status", 400, {"detail": "Model mismatch"})]) as fake:
        [refused] = run(engine_for(fake), batch(1))
    assert isinstance(refused, EngineRefused) and refused.code is FailureCode.INVALID_PARAMETERS


def test_server_errors_are_retried_then_the_engine_is_unavailable() -> None:
    plain_500 = ("status", 500, "Internal Server Error")  # §1.5: plain text
    with serving("sglang", script=[plain_500, ("status", 503, {"status": "unhealthy"})]) as fake:
        [image] = run(engine_for(fake, retries=2), batch(1))
        assert image.size == (1344, 768) and len(fake.received) == 3
    with serving("sglang", script=[plain_500] * 3) as fake, pytest.raises(EngineUnavailable):
        run(engine_for(fake, retries=2), batch(1))
    with serving("sglang") as fake:
        url = fake.url
    down = RemoteImageEngine("krea-2-turbo", ModelConfig(remote=RemoteEngine(url=url)), steps=8)
    OPEN.append(down)
    with pytest.raises(EngineUnavailable):
        run(down, batch(1))


def test_the_probe_checks_the_model_and_generates_once() -> None:
    with serving("vllm-omni") as fake:
        engine_for(fake).probe()
        assert len(fake.received) == 1
        with pytest.raises(EngineError, match="not some/other"):
            engine_for(fake, served_model="some/other").probe()
    with pytest.raises(EngineUnavailable):
        engine_for(fake).probe()  # its server has stopped


def test_liveness_is_the_engines_health_route() -> None:
    with serving("vllm-omni") as fake:
        engine = engine_for(fake)
        assert engine.alive() is True
        fake.healthy = False
        assert engine.alive() is False  # §2.1: 503 once its engine is dead
        assert engine_for(fake, flavor_override="openai").alive() is None  # none known
    assert engine.alive() is False  # its server has stopped


def test_the_key_is_sent_as_a_bearer_from_the_setting_or_a_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENGINE_KEY", "from-the-environment")
    with serving("sglang") as fake:
        assert engine_for(fake, api_key="k1").http.headers["authorization"] == "Bearer k1"
        named = engine_for(fake, api_key_env="ENGINE_KEY")
        assert named.http.headers["authorization"] == "Bearer from-the-environment"
        assert "authorization" not in engine_for(fake).http.headers


@pytest.mark.process
def test_a_forwarding_engine_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # as in the API image: importing it fails\n"
        "from darkroom.worker.worker import Worker\n"
        "from darkroom.engine.loading import load_any_engine\n"
        "from darkroom.settings import Settings\n"
        "remote = {'url': 'http://127.0.0.1:9/v1'}\n"
        "s = Settings(models={'krea-2-turbo': {'remote': remote, 'weights': '/nowhere'}})\n"
        "from darkroom.worker.main import prepare_process\n"
        "prepare_process(s)  # what `darkroom worker` does before its engine\n"
        "load_any_engine(s)\n"
        "assert sys.modules['torch'] is None, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
