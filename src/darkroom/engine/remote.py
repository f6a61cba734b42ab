"""A remote engine: the worker's `Engine`, served by an engine that speaks the OpenAI Images
protocol (SGLang Diffusion, vLLM-Omni, another darkroom's `/openai/v1`, or any OpenAI-compatible
server). No torch here: the worker forwards each task as one request and checks the picture.

Each flavour is sent what keeps darkroom's promises on that engine (the engines' own defaults
and quirks are gathered, with sources, in shared/spec/REMOTE-ENGINES.md):

- one image a request, the task's seed always explicit (SGLang's default seed is a constant,
  vLLM-Omni's random and never returned), so each task's seed is its own and reproduces;
- the contract's pixels as `size` `WxH` (and `width`/`height` for SGLang, where they win);
- the steps and guidance of the registry entry, in the engine's own convention: SGLang counts
  "no guidance" as 1.0 (`uncond + g(cond - uncond)`), vLLM-Omni and diffusers as 0.0, and
  vLLM-Omni's Krea 2 defaults (28 steps at 4.5) are the Raw model's, so both are sent;
- `response_format: b64_json` (SGLang refuses `url` here) and `output_format: png` (SGLang
  answers JPEG by default); the picture is decoded and checked (the size asked, not empty)
  before it counts.

Failures: a 4xx fails the task with a business code and is not retried; 5xx, timeouts and
connection errors are retried with back-off, and then raise `EngineUnavailable`, which the
worker answers by giving the tasks back to the queue (no attempt spent) and waiting, unready,
until the engine answers a probe again.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import structlog

from darkroom.contract import FailureCode
from darkroom.engine.base import (
    Batch,
    EngineError,
    EngineRefused,
    EngineUnavailable,
    Job,
    StepCallback,
)
from darkroom.settings import ModelConfig, RemoteEngine, Settings

if TYPE_CHECKING:
    from PIL.Image import Image

log = structlog.get_logger("darkroom.remote")

# A progress tick: the engines report none, so progress rises with the time similar requests
# took, up to PROGRESS_CAP of the steps (the worker shows 100 only with the result).
TICK_S = 0.2
PROGRESS_CAP = 0.95
FIRST_GUESS_S = 5.0  # the expected duration before any request has been timed
BACKOFF_S = (1.0, 2.0, 4.0, 8.0)
# Each flavour's liveness route, at the server's root (a plain OpenAI server has none known).
HEALTH_ROUTES = {"sglang": "/health", "vllm-omni": "/health", "darkroom": "/healthz"}


def request_body(flavor: str, job: Job, width: int, height: int, config: ModelConfig,
                 steps: int, served: str | None) -> dict[str, Any]:  # fmt: skip
    """The JSON a flavour is sent for one job."""
    body: dict[str, Any] = {
        "prompt": job.prompt,
        "n": 1,
        "size": f"{width}x{height}",
        "seed": job.seed,
        "response_format": "b64_json",
        "output_format": "png",
    }
    if served is not None:
        body["model"] = served
    if flavor == "sglang":
        body |= {
            "width": width,
            "height": height,
            "num_inference_steps": steps,
            "guidance_scale": config.guidance_scale + 1.0,  # SGLang: 1.0 is no guidance
        }
    elif flavor == "vllm-omni":
        body |= {"num_inference_steps": steps, "guidance_scale": config.guidance_scale}
    return body


def served_name(remote: RemoteEngine, model: str) -> str | None:
    """The `model` field sent: the configured name; else the registry name where the engine
    routes by it (darkroom, OpenAI), and none where it would refuse a name it does not serve
    (vLLM-Omni checks it) or ignores it (SGLang)."""
    if remote.served_model is not None:
        return remote.served_model
    return model if remote.flavor in ("darkroom", "openai") else None


def decode(b64: str, width: int, height: int) -> Image:
    """The engine's picture, checked: a PNG, JPEG or WebP of exactly the size asked."""
    import PIL.Image

    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise EngineError("the engine's b64_json is not base64") from None
    if not data:
        raise EngineError("the engine answered an empty image")
    try:
        image = PIL.Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:
        raise EngineError(f"the engine's image cannot be read: {exc}") from None
    if image.format not in ("PNG", "JPEG", "WEBP"):
        raise EngineError(f"the engine answered a {image.format} image")
    if image.size != (width, height):
        got = "x".join(map(str, image.size))
        raise EngineError(f"the engine answered {got}, not the {width}x{height} asked")
    return image.convert("RGB")


def _refusal_code(body: Any) -> FailureCode:
    """A 4xx's business code: the content policy where the engine says so."""
    text = str(body).lower()
    if "content_policy" in text or "content policy" in text:
        return FailureCode.CONTENT_POLICY_VIOLATION
    return FailureCode.INVALID_PARAMETERS


def _message(response: httpx.Response) -> str:
    """The error's words from any of the engines' shapes: OpenAI's, FastAPI's, plain text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:300]
        if body.get("detail") is not None:
            return str(body["detail"])[:300]
    return str(body)[:300]


class RemoteImageEngine:
    """The `Engine` a worker drives when its model's registry entry has `remote`."""

    def __init__(self, model: str, config: ModelConfig, steps: int, tokenizer: Any = None,
                 transport: httpx.BaseTransport | None = None) -> None:  # fmt: skip
        assert config.remote is not None
        self.models: tuple[str, ...] = (model,)
        self.config = config
        self.remote = config.remote
        self.steps = steps
        self.device = "remote"
        self._tokenizer = tokenizer
        headers = {"Authorization": f"Bearer {key}"} if (key := self.remote.key()) else {}
        self.http = httpx.Client(
            base_url=self.remote.url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(self.remote.timeout_s, connect=5.0),
            transport=transport,
        )
        self._pool = ThreadPoolExecutor(self.remote.concurrency, thread_name_prefix="remote")
        # httpx logs every request at INFO: a health check each heartbeat would flood the log
        # (the engine's failures are logged here, with what they cost).
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self._durations: dict[tuple[int, int], float] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, model: str) -> RemoteImageEngine:
        config = settings.models[model]
        steps = config.steps or settings.num_inference_steps
        return cls(model, config, steps, tokenizer=_tokenizer(settings, model))

    @property
    def concurrency(self) -> int:
        """Requests in flight at once: the worker claims this many tasks a batch."""
        return self.remote.concurrency

    def count_tokens(self, prompt: str) -> int:
        """The model's tokenizer's count where this worker has it; else 0 (the API counted
        every prompt at submit with it)."""
        return self._tokenizer.count(prompt) if self._tokenizer is not None else 0

    def generate(self, batch: Batch, on_step: StepCallback) -> Sequence[Image | EngineError]:
        """One request a job, up to `concurrency` at once; progress rises meanwhile. A job the
        engine refused or answered badly gives its EngineError in its place; an engine that
        does not answer raises EngineUnavailable for the whole batch."""
        size = (batch.width, batch.height)
        expected = self._durations.get(size, FIRST_GUESS_S)
        done = threading.Event()
        started = time.monotonic()

        def tick() -> None:
            while not done.wait(TICK_S):
                share = min(PROGRESS_CAP, (time.monotonic() - started) / expected)
                on_step(int(share * 100), 100)

        ticker = threading.Thread(target=tick, name="remote-progress", daemon=True)
        ticker.start()
        try:
            futures = [self._pool.submit(self.one, batch, job) for job in batch.jobs]
            images: list[Image | EngineError] = []
            for future in futures:
                try:
                    images.append(future.result())
                except EngineUnavailable:
                    raise
                except EngineError as exc:
                    images.append(exc)
        finally:
            done.set()
            ticker.join()
        took = (time.monotonic() - started) / max(1, -(-len(batch.jobs) // self.remote.concurrency))
        with self._lock:  # a moving average of how long such a request takes
            self._durations[size] = 0.7 * self._durations.get(size, took) + 0.3 * took
        return images

    def one(self, batch: Batch, job: Job) -> Image:
        """One job's request, retried on 5xx and connection errors; its picture, checked."""
        body = request_body(
            self.remote.flavor, job, batch.width, batch.height, self.config, self.steps,
            served_name(self.remote, batch.model),
        )  # fmt: skip
        last = "no answer"
        for attempt in range(self.remote.retries + 1):
            if attempt:
                time.sleep(BACKOFF_S[min(attempt - 1, len(BACKOFF_S) - 1)])
            try:
                # Marked as the `openai` package marks its retries: another darkroom answers a
                # retry with the tasks its first attempt made, instead of generating again.
                retry = {"x-stainless-retry-count": str(attempt)}
                response = self.http.post("/images/generations", json=body, headers=retry)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                log.warning("engine unreachable", attempt=attempt + 1, error=last)
                continue
            if response.status_code >= 500 or response.status_code in (408, 429):
                last = f"{response.status_code}: {_message(response)}"
                log.warning("engine failed", attempt=attempt + 1, error=last)
                continue
            if response.status_code >= 400:
                message = _message(response)
                raise EngineRefused(f"The engine refused the request: {message}",
                                    _refusal_code(message))  # fmt: skip
            data = response.json().get("data") or []
            if not data or not data[0].get("b64_json"):
                raise EngineError("the engine answered no image")
            return decode(data[0]["b64_json"], batch.width, batch.height)
        raise EngineUnavailable(f"the engine at {self.remote.url} did not answer: {last}")

    def probe(self) -> None:
        """Ready means it: the model is listed (where the flavour lists it by name), and one
        real generation at the smallest size answers a picture. Raises EngineError if not."""
        try:
            listed = self.http.get("/models", timeout=10)
        except httpx.TransportError as exc:
            message = f"the engine at {self.remote.url} does not answer: {exc}"
            raise EngineUnavailable(message) from None
        if listed.status_code >= 400:
            raise EngineUnavailable(f"the engine's /models answered {listed.status_code}")
        served = served_name(self.remote, self.models[0])
        names = [m.get("id") for m in (listed.json().get("data") or []) if isinstance(m, dict)]
        if served is not None and names and served not in names:
            raise EngineError(f"the engine serves {', '.join(map(str, names))}, not {served}")
        width, height = 1024, 1024  # a contract size: darkroom's own route takes no other
        self.one(Batch(self.models[0], width, height, (Job("probe", "a test card", 1),)),
                 Job("probe", "a test card", 1))  # fmt: skip

    def alive(self) -> bool | None:
        """Whether the engine's process answers its health route (None: the flavour has none).
        Liveness only: SGLang's route answers without touching the GPU, which is why readiness
        is the probe's real generation."""
        route = HEALTH_ROUTES.get(self.remote.flavor)
        if route is None:
            return None
        parts = urlsplit(self.remote.url)
        try:
            answer = self.http.get(f"{parts.scheme}://{parts.netloc}{route}", timeout=5)
        except httpx.TransportError:
            return False
        return answer.status_code < 400

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()


def _tokenizer(settings: Settings, model: str) -> Any:
    """The model's tokenizer (with `tokenizers`, no torch), where it can be had."""
    try:
        from darkroom.engine.tokens import FileTokenCounter, _tokenizer_file

        path = _tokenizer_file(settings.weights_for(model))
        return FileTokenCounter(path) if path is not None else None
    except ImportError:
        return None
