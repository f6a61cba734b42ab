"""The one typed configuration, read from `DARKROOM_*` environment variables and validated at start.

Over 400 lines on purpose: every knob is one field with its documentation beside it (the
source of docs/configuration.md), and the checks across fields sit in one validator.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from darkroom.attention_backends import GQA_BACKENDS, MASK_REFUSING_BACKENDS
from darkroom.contract import MODEL_KREA_2_TURBO

# Secrets that were ever published (in this project's source): a link signed with one of them
# can be forged by anyone.
KNOWN_SECRETS = frozenset({"dev-insecure-signing-secret"})
MIN_SECRET_CHARS = 32
# SigV4 presigned links live at most 7 days; a result's 24 hours fit.
MAX_LINK_S = 7 * 24 * 3600


class SecretRefused(RuntimeError):
    """This process's signing secret cannot be used; the message says what to do."""


def check_secret(secret: str) -> str:
    """`secret`, unless it is published or too short to resist guessing (ValueError)."""
    if secret in KNOWN_SECRETS:
        raise ValueError("DARKROOM_SIGNING_SECRET is a published value; generate your own")
    if len(secret) < MIN_SECRET_CHARS:
        raise ValueError(
            f"DARKROOM_SIGNING_SECRET must be at least {MIN_SECRET_CHARS} characters; make one "
            "with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return secret


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket/some/prefix`; ValueError for anything else."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket[/prefix] URL: {url!r}")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


REMOTE_FLAVORS = ("sglang", "vllm-omni", "openai", "darkroom")


class RemoteEngine(BaseModel):
    """An engine that serves the model over the OpenAI Images protocol (SGLang Diffusion,
    vLLM-Omni, another darkroom's `/openai/v1`): a worker forwards its tasks there instead of
    loading weights. docs/remote-engines.md says what each flavour is sent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(description="The engine's OpenAI base URL, e.g. http://sglang:30000/v1")
    flavor: Literal["sglang", "vllm-omni", "openai", "darkroom"] = "openai"
    api_key: str | None = None
    api_key_env: str | None = None  # the name of a variable holding the key: better for secrets
    served_model: str | None = None  # the name the engine serves; default: per flavour
    concurrency: int = Field(1, ge=1, le=64)  # requests in flight per worker
    timeout_s: float = Field(600.0, gt=0)  # per request; above the engine's own
    retries: int = Field(3, ge=0, le=10)  # of 5xx and connection errors, with back-off

    def key(self) -> str | None:
        """The API key: `api_key`, or the variable `api_key_env` names."""
        if self.api_key_env is not None:
            return os.environ.get(self.api_key_env) or None
        return self.api_key


class ModelConfig(BaseModel):
    """One public model name's engine configuration; None means the global setting."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: str | None = None  # hub id or folder; None: DARKROOM_MODEL_PATH (or the tiny model)
    steps: int | None = Field(None, gt=0)
    guidance_scale: float = Field(0.0, ge=0)
    # None: bfloat16 on a GPU, float32 on a CPU (where bf16 is slow); a dtype named is kept.
    dtype: Literal["bfloat16", "float16", "float32"] | None = None
    fp8: Literal["off", "storage", "torchao"] | None = None
    attention_backend: str | None = None
    compile: bool | None = None
    vae_tiling: bool | None = None
    offload: Literal["none", "model", "sequential"] | None = None
    compact_text: bool | None = None
    native_gqa: bool | None = None
    # Whether callers may cancel this model's pending tasks (POST /v1/tasks/{id}/cancel). The
    # hosted contract says krea-2-turbo tasks cannot be: off unless the operator turns it on.
    cancellable: bool = False
    # Served by a remote engine: the worker forwards; `weights` then names where the tokenizer
    # (the 640-token count) comes from.
    remote: RemoteEngine | None = None


# The async driver darkroom runs each database on (the PostgreSQL listener uses asyncpg itself),
# and the drivers a URL may name for it: none, that one, or SQLite's standard-library one.
_ASYNC_DRIVERS = {"postgresql": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite"}
_ACCEPTED_DRIVERS = {"postgresql": {"", "asyncpg"}, "sqlite": {"", "aiosqlite", "pysqlite"}}


def database_url_for_asyncio(url: str) -> str:
    """`url` with darkroom's async driver for its database, so a DSN as a provider gives it
    (`postgres://...?sslmode=require`) works as it is; ValueError for other databases and drivers.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(f"DARKROOM_DATABASE_URL is not a database URL: {exc}") from exc
    backend, _, driver = parsed.drivername.partition("+")
    backend = "postgresql" if backend == "postgres" else backend
    wanted = _ASYNC_DRIVERS.get(backend)
    if wanted is None:
        raise ValueError("DARKROOM_DATABASE_URL must be a SQLite or PostgreSQL URL")
    if driver not in _ACCEPTED_DRIVERS[backend]:
        raise ValueError(f"DARKROOM_DATABASE_URL: darkroom runs {backend} through {wanted}")
    parsed = parsed.set(drivername=wanted)
    if backend == "postgresql" and "sslmode" in parsed.query:
        # libpq's parameter; asyncpg takes the same values as `ssl`.
        query = dict(parsed.query)
        mode = query.pop("sslmode")
        query.setdefault("ssl", mode)
        parsed = parsed.set(query=query)
    return parsed.render_as_string(hide_password=False)


class Settings(BaseSettings):
    """Every knob darkroom has. Each field's description is its documentation (docs/configuration.md)."""

    # An empty variable is an unset one (compose files pass `${X:-}` through as "").
    model_config = SettingsConfigDict(
        env_prefix="DARKROOM_", extra="ignore", frozen=True, env_ignore_empty=True
    )

    environment: Literal["development", "production"] = Field(
        "development",
        description="`production` refuses insecure defaults (an unset signing secret, private "
        "callback addresses).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Lowest level of the log lines written to standard error."
    )
    log_format: Literal["console", "json"] = Field(
        "console",
        description="`json`: one JSON object per log line (timestamp, level, logger, event, and "
        "the bound `request_id` / `task_id`), darkroom's and its libraries' (uvicorn, alembic) "
        "alike; `console`: the same fields as text for people.",
    )
    otel_endpoint: str | None = Field(
        None,
        description="OpenTelemetry collector (OTLP over HTTP, e.g. `http://otel-collector:4318`): "
        "each task becomes one trace, from the API's request through its wait in the queue, "
        "generation and finishing on a worker, to its callback (`pip install 'darkroom[otel]'`). "
        "Unset: no tracing, and nothing of OpenTelemetry is loaded.",
    )
    data_dir: Path = Field(
        Path("./darkroom-data"),
        description="Folder for the SQLite database, result files and the tiny model.",
    )
    database_url: str | None = Field(
        None,
        description="SQLite or PostgreSQL URL; default: a SQLite file in the data folder. "
        "PostgreSQL: `postgresql://user@host/db` (`postgres://` too; run through asyncpg, with "
        "`sslmode` read as asyncpg's `ssl`). SQLite: `sqlite:////absolute/path.db`.",
    )
    public_url: str | None = Field(
        None,
        description="Base URL clients reach the API at, for result links; default: the request's own.",
    )
    signing_secret: str | None = Field(
        None,
        description="HMAC secret that signs result links, at least 32 characters. Unset: a "
        "random one is generated on first start and kept in DATA_DIR/signing-secret (owner-only). "
        "A fleet sets the same one on every API process (required in production); the database "
        "keeps its fingerprint, and a process with another secret refuses to start.",
    )
    result_ttl_s: int = Field(86_400, gt=0, description="Seconds a result link and file live.")
    storage_url: str | None = Field(
        None,
        description="Where results go: unset, files under DATA_DIR/results served by the API; "
        "s3://bucket/prefix, an S3-compatible bucket (the s3 extra) with presigned links.",
    )
    s3_endpoint_url: str | None = Field(
        None, description="The S3 server for DARKROOM_STORAGE_URL when it is not AWS (MinIO...)."
    )
    s3_public_endpoint_url: str | None = Field(
        None,
        description="The S3 server's address as clients reach it, for result links, when the "
        "servers reach it at another (a MinIO on a private network); default: the same.",
    )
    s3_region: str | None = Field(None, description="The bucket's region; default: boto3's.")
    task_retention_s: int = Field(
        7 * 86_400,
        gt=0,
        description="Seconds a finished task stays queryable before it is deleted.",
    )
    png_compress_level: int = Field(
        1,
        ge=0,
        le=9,
        description="zlib level of result PNGs: 0 stores uncompressed, 1 (fastest) is ISA-L's "
        "igzip level 1, 2-9 zlib's usual trade of speed for size. The pixels are the same at "
        "every level.",
    )
    max_body_bytes: int = Field(64 * 1024, gt=0, description="Largest accepted request body.")
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Seconds a client has to send a request's line and headers (from connecting, "
        "or from the previous response on a kept-alive connection); slower ones are cut off.",
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description="Client connections one API process holds at once; one more is answered "
        "503 with Retry-After and closed. The process raises its open-file limit to fit, or "
        "lowers this to what the limit allows (and says so).",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Seconds a client has to send a request's body once its headers are in; "
        "slower ones get 400.",
    )
    metrics: bool = Field(
        True,
        description="Serve GET /metrics (Prometheus): the queue per model, read from the task "
        "table; no key needed, so keep it off the public side of a proxy or switch it off.",
    )

    engine: Literal["krea2", "tiny"] = Field(
        "krea2",
        description="`krea2`: the real Krea 2 Turbo weights; `tiny`: a tiny random model of the same "
        "classes for tests and offline demos (its images are noise).",
    )
    model_path: str = Field(
        "krea/Krea-2-Turbo",
        description="Hugging Face id or local folder of the Krea 2 Turbo weights (engine=krea2).",
    )
    tokenizer_file: Path | None = Field(
        None,
        description="The model's `tokenizer.json`, which API processes count prompt tokens "
        "with, for every registered model; default: each model's own, from its weights' "
        "folder or the Hugging Face cache. The API image sets it to the one it carries.",
    )
    tiny_model_path: Path | None = Field(
        None,
        description="Where the tiny model is built and loaded (engine=tiny); default: in the data folder.",
    )
    tiny_pause_file: Path | None = Field(
        None,
        description="engine=tiny only: while this file exists, each generation waits after its "
        "first denoising step, so a test or a demo sees live progress however fast the machine.",
    )
    device: str | None = Field(
        None, description="torch device; default: cuda if present, else cpu."
    )
    num_inference_steps: int = Field(8, gt=0, description="Denoising steps (turbo: 8).")
    attention_backend: str | None = Field(
        None,
        description="diffusers attention backend for the transformer (e.g. `_native_cudnn` or, "
        "with compact_text, a flash backend on H100/H200); default: diffusers' own (native SDPA).",
    )
    compile: bool = Field(
        False, description="Regional torch.compile of the transformer's repeated blocks."
    )
    warmup: bool | None = Field(
        None,
        description="Generate once before taking tasks at the sizes compilation and kernel "
        "selection need (square 1K, a second 1K shape, the largest 2K), logging how long it "
        "took; default: on with CUDA, off on CPU.",
    )
    vae_tiling: bool = Field(False, description="Tiled VAE decode (less memory at 2K).")
    keep_freed_memory: bool = Field(
        True,
        description="With the engine on the CPU (Linux, glibc): keep the memory torch frees for "
        "the next image instead of returning it to the system and faulting it in again (tiny "
        "engine: a third less time per 1K image); the worker's resident memory stays at its peak.",
    )
    compact_text: bool = Field(
        True,
        description="Encode each prompt at its own length and give the transformer only its real "
        "text tokens, instead of diffusers' fixed 640-token padded block (same result up to "
        "rounding; shorter sequences, and no attention mask, so flash backends apply).",
    )
    native_gqa: bool = Field(
        False,
        description="With compact_text: attention reads the 12 key/value heads as they are "
        "(SDPA's grouped-query attention) instead of diffusers' copy of them to 48 heads. Same "
        "result; bench/gpu_bench.py measures whether it is faster on the card.",
    )
    fp8: Literal["off", "storage", "torchao"] = Field(
        "off",
        description="fp8 transformer weights: `storage` (layerwise casting, half the memory; not "
        "with `compile`) or `torchao` (fp8 matmuls on Hopper; the `fp8` extra).",
    )
    offload: Literal["none", "model", "sequential"] = Field(
        "none",
        description="For GPUs too small for the whole pipeline: `model` keeps each component on "
        "the CPU until it runs (diffusers' model offload), `sequential` streams layer by layer "
        "(slowest, least memory). Needs CUDA.",
    )
    models: dict[str, ModelConfig] = Field(
        default_factory=lambda: {MODEL_KREA_2_TURBO: ModelConfig()},
        description="The model registry (JSON): public model name -> engine configuration "
        "(`weights`, `steps`, `guidance_scale`, `dtype`, and overrides of `fp8`, "
        "`attention_backend`, `compile`, `vae_tiling`, `offload`, `compact_text`, `native_gqa`), "
        "`cancellable` (callers may cancel its pending tasks; default false, as the hosted "
        "contract says of krea-2-turbo), and `remote` (`url`, `flavor` sglang/vllm-omni/openai/"
        "darkroom, `api_key` or `api_key_env`, `served_model`, `concurrency`, `timeout_s`, "
        "`retries`: a worker forwards to that engine instead of loading weights). Unset fields "
        "take the "
        "settings above. A JSON list of names is short for names with default configurations.",
    )
    worker_model: str | None = Field(
        None,
        description="The registry entry a worker loads (one model per worker); default: the "
        "first. Run a worker per model to serve several.",
    )
    prices: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {MODEL_KREA_2_TURBO: {"1K": 0.45, "2K": 1.8}},
        description="Credits per image by model and quality (JSON).",
    )

    redis_url: str | None = Field(
        None,
        description="Redis for rate-limit counters shared by every API process; default: "
        "counters in each process.",
    )
    redis_prefix: str = Field(
        "darkroom", description="Prefix of darkroom's keys in Redis (one per deployment)."
    )
    default_rate_limit: str = Field(
        "120/minute",
        description="Requests a key may make, in `limits` notation (`N/second|minute|hour|day`), "
        "unless the key has its own.",
    )
    query_rate_limit: str = Field(
        "1200/minute",
        description="Task queries (polls) a key may make; counted apart from creates.",
    )
    failed_auth_rate_limit: str = Field(
        "30/minute",
        description="Failed authentications one client address may make (per API process); past "
        "it, its requests get 429 with Retry-After and no database read, except with a key the "
        "process already knows to be live.",
    )
    key_cache_s: float = Field(
        5.0,
        ge=0,
        le=300,
        description="Seconds an API process remembers who a key is: a key revoked elsewhere "
        "is refused by every API process at most this long after. 0: ask the database on "
        "every request.",
    )
    events_interval_s: float = Field(
        0.5,
        gt=0,
        le=10,
        description="How often `GET /v1/tasks/{id}/events` looks for news of its tasks: one "
        "read per API process for all its open streams.",
    )
    events_max_streams_per_key: int = Field(
        16,
        ge=1,
        description="Event streams one key may hold open on one API process; past it a new "
        "stream is refused with 429 and Retry-After.",
    )
    events_max_streams: int = Field(
        512,
        ge=1,
        description="Event streams one API process holds open for all keys together (each is a "
        "socket and a file descriptor); past it, 429 with Retry-After.",
    )
    events_max_lifetime_s: float = Field(
        300.0,
        gt=0,
        description="Seconds an event stream stays open before the server ends it; the client "
        "reconnects with Last-Event-ID and misses nothing (EventSource and darkroom's SDK do it "
        "by themselves). A stream on a task that never ends holds nothing for ever.",
    )
    openai_wait_s: float = Field(
        300.0,
        gt=0,
        le=590,
        description="Seconds the OpenAI-compatible route (`/openai/v1/images/generations`, which "
        "answers with the images) waits for them; past it the answer is 504 naming the task ids, "
        "which go on and stay fetchable on the task route. Under the `openai` package's own 600 s "
        "timeout, so it never times out and retries a request still being served.",
    )
    openai_poll_interval_s: float = Field(
        0.1,
        gt=0,
        description="How often the OpenAI-compatible route reads the tasks its requests wait "
        "for (one query for all of them, per API process, only while some wait): the most it "
        "adds to an image's latency.",
    )
    openai_max_n: int = Field(
        10, ge=1, le=100, description="Most images (`n`) one OpenAI-compatible request may ask for."
    )
    openai_retry_window_s: float = Field(
        900.0,
        ge=0,
        description="How long a request the `openai` package retries (`x-stainless-retry-count` "
        "above 0, same key and body) is answered with the first attempt's tasks instead of new "
        "ones, so a retry after a dropped connection or a timeout is neither generated nor charged "
        "twice. 0: every retry makes new tasks.",
    )
    max_queued_per_model: int | None = Field(
        None,
        ge=1,
        description="Pending tasks a model may have; past it a create answers 503 "
        "service_unavailable with Retry-After instead of queueing without bound. Default: no "
        "bound.",
    )
    refuse_unserved_after_s: float | None = Field(
        None,
        gt=0,
        description="Seconds a model may go without a live worker before a create for it "
        "answers 503 service_unavailable with Retry-After instead of queueing for nobody "
        "(counted from the model's last worker seen, or from the API's start). Default: never.",
    )
    default_max_concurrent: int = Field(
        16, ge=1, description="Unfinished tasks a key may have at once, unless the key has its own."
    )
    worker_batch_size: int = Field(1, ge=1, le=16, description="Most compatible tasks per batch.")
    worker_poll_interval_s: float = Field(
        0.1,
        gt=0,
        description="Idle wait between looks for pending tasks (a read; the claim, a write, "
        "only follows when there is something to take).",
    )
    lease_s: float = Field(60.0, gt=0, description="Seconds a claim lasts without a heartbeat.")
    heartbeat_s: float = Field(10.0, gt=0, description="Seconds between lease extensions.")
    max_attempts: int = Field(
        3, ge=1, description="Claims a task gets before a lost lease fails it (service_error)."
    )
    worker_ready_file: Path | None = Field(
        None,
        description="A file the worker touches once its model is loaded and at every "
        "heartbeat, and removes when it stops: its readiness for a container healthcheck or a "
        "Kubernetes probe (`darkroom healthcheck --ready-file`).",
    )
    worker_metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port a worker serves its Prometheus figures on (task phases and outcomes, "
        "GPU memory); unset: none. The API's `/metrics` has the queue's.",
    )
    worker_metrics_address: str = Field(
        "0.0.0.0",  # noqa: S104 (deliberate: scraped from outside the pod)
        description="Address the worker's metrics listen on (all interfaces: a pod's "
        "Prometheus scrapes its IP).",
    )
    worker_database_outage_s: float = Field(
        600.0,
        gt=0,
        description="Seconds a worker keeps retrying a database that fails (with back-off, its "
        "model kept loaded) before it exits with an error.",
    )
    progress_flush_s: float = Field(
        0.5, gt=0, description="Least seconds between progress writes to the task row."
    )
    maintenance_interval_s: float = Field(
        5.0, gt=0, description="Seconds between lease-rescue and expiry sweeps in API processes."
    )

    callback_allow_private: bool = Field(
        False,
        description="Development only: let callbacks use plain http and reach loopback and "
        "private addresses. Refused at start unless `environment` is `development`.",
    )
    callback_ca_file: Path | None = Field(
        None,
        description="PEM file of extra certificate authorities callback receivers may use "
        "(a private CA); the system's are always trusted.",
    )
    callback_poll_interval_s: float = Field(
        1.0,
        gt=0,
        description="Most seconds between looks for new callbacks in API processes (retries "
        "are sent when they fall due, whatever this is).",
    )
    callback_concurrency: int = Field(
        32, ge=1, description="Callback deliveries one API process runs at once."
    )
    callback_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="Share of `callback_concurrency` one account, or one receiving host, may "
        "hold at once (at least one delivery); hosts whose attempts keep timing out share half "
        "of one such share between them.",
    )

    moderation_lists: tuple[Path, ...] = Field(
        (),
        description="Extra prompt deny-list files (JSON list of paths), in the format of "
        "darkroom/moderation/lists/default.txt; the built-in list always applies.",
    )
    moderation_image: Literal["auto", "nudenet", "off"] = Field(
        "auto",
        description="Image check on every result: `nudenet` (the `moderation` extra; AGPL-3.0), "
        "`auto` (NudeNet when installed), `off`. Without a checker, nsfw_check=true is refused.",
    )
    moderation_basic_threshold: float = Field(
        0.7,
        gt=0,
        le=1,
        description="Detector score from which explicit nudity is refused in every request.",
    )
    moderation_strict_threshold: float = Field(
        0.4,
        gt=0,
        le=1,
        description="Detector score from which any exposed intimate area is refused when "
        "nsfw_check is true.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str | None) -> str | None:
        return None if value is None else database_url_for_asyncio(value)

    @field_validator("models", mode="before")
    @classmethod
    def _names_are_short_for_defaults(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return {name: {} for name in value}
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if not self.models:
            raise ValueError("DARKROOM_MODELS must name at least one model")
        if self.worker_model is not None and self.worker_model not in self.models:
            raise ValueError(
                f"DARKROOM_WORKER_MODEL {self.worker_model!r} is not in DARKROOM_MODELS"
            )
        if self.signing_secret is not None:
            check_secret(self.signing_secret)
        elif self.environment == "production":
            raise ValueError("DARKROOM_SIGNING_SECRET must be set in production")
        if self.environment != "development" and self.callback_allow_private:
            raise ValueError(
                "DARKROOM_CALLBACK_ALLOW_PRIVATE is for development only "
                "(DARKROOM_ENVIRONMENT=development)"
            )
        if self.storage_url is not None:
            parse_s3_url(self.storage_url)  # ValueError: not s3://bucket[/prefix]
            if importlib.util.find_spec("boto3") is None:
                raise ValueError(
                    "DARKROOM_STORAGE_URL names an S3 bucket, which needs the s3 extra: "
                    "pip install 'darkroom[s3]'"
                )
            if self.result_ttl_s > MAX_LINK_S:
                raise ValueError("DARKROOM_RESULT_TTL_S is longer than a presigned link can live")
        if self.heartbeat_s >= self.lease_s:
            raise ValueError("DARKROOM_HEARTBEAT_S must be shorter than DARKROOM_LEASE_S")
        from limits import parse

        parse(self.default_rate_limit)  # ValueError: not a rate
        parse(self.query_rate_limit)
        parse(self.failed_auth_rate_limit)
        for path in self.moderation_lists:
            if not path.is_file():
                raise ValueError(f"moderation list {path} does not exist")
        for model, config in self.models.items():
            remote = config.remote
            if remote is not None and remote.api_key_env and remote.api_key_env not in os.environ:
                raise ValueError(f"{model}: remote.api_key_env names {remote.api_key_env}, unset")
            if remote is not None and not remote.url.startswith(("http://", "https://")):
                raise ValueError(f"{model}: remote.url must be an http(s) URL: {remote.url!r}")
            fp8 = config.fp8 if config.fp8 is not None else self.fp8
            compiled = config.compile if config.compile is not None else self.compile
            if fp8 == "storage" and compiled:
                raise ValueError(
                    f"{model}: fp8 `storage` cannot be combined with `compile`: layerwise "
                    "casting makes new Parameters on every forward, which torch.compile's "
                    "full graph refuses (the worker would die on its first image). Choose one, "
                    "or fp8 `torchao`, which compiles."
                )
            backend = config.attention_backend or self.attention_backend
            compact = config.compact_text if config.compact_text is not None else self.compact_text
            if not compact and backend in MASK_REFUSING_BACKENDS:
                raise ValueError(
                    f"{model}: attention backend `{backend}` takes no attention mask, and "
                    "without compact_text the transformer attends over diffusers' padded text "
                    "block with one (the worker would die on its first image). Turn "
                    "compact_text on, or choose a backend that takes a mask (`_native_cudnn`, "
                    "`native`)."
                )
            gqa = config.native_gqa if config.native_gqa is not None else self.native_gqa
            if gqa and not compact:
                raise ValueError(
                    f"{model}: native_gqa needs compact_text: with a text mask, SDPA's "
                    "grouped-query attention falls back to the math kernel, which builds the "
                    "whole attention matrix."
                )
            if gqa and backend not in GQA_BACKENDS:
                raise ValueError(
                    f"{model}: native_gqa needs a backend that attends grouped key/value heads "
                    f"itself ({', '.join(sorted(b or 'the default' for b in GQA_BACKENDS))}); "
                    f"`{backend}` would still get copies of them."
                )
        for model, table in self.prices.items():
            if set(table) != {"1K", "2K"}:
                raise ValueError(f"prices for {model} must name exactly 1K and 2K")
            for quality, price in table.items():
                if not math.isfinite(price) or price < 0:
                    raise ValueError(
                        f"the {quality} price of {model} must be a number of credits, 0 or "
                        f"more (got {price})"
                    )
        unpriced = sorted(set(self.models) - set(self.prices))
        if unpriced:
            raise ValueError(f"DARKROOM_PRICES has no prices for {', '.join(unpriced)}")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'darkroom.db').resolve()}"

    @property
    def served_model(self) -> str:
        """The model a worker with these settings loads."""
        return self.worker_model or next(iter(self.models))

    def weights_for(self, model: str) -> str:
        """Where `model`'s weights come from: its own, the tiny model, or DARKROOM_MODEL_PATH."""
        own = self.models[model].weights
        if own is not None:
            return own
        return str(self.tiny_model_dir.absolute()) if self.engine == "tiny" else self.model_path

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def tiny_model_dir(self) -> Path:
        return self.tiny_model_path or self.data_dir / "tiny-krea2"


_DOC_HEADER = """# Configuration

Every setting is an environment variable with the `DARKROOM_` prefix, read once at start and
validated (a bad value stops the process with a message). Generated from `darkroom.settings.Settings`
by `python -m darkroom.settings > docs/configuration.md`; `tests/test_settings.py` keeps this page
and the code in step.

| variable | default | meaning |
|---|---|---|
"""


def configuration_markdown() -> str:
    """docs/configuration.md, from the fields' defaults and descriptions."""
    import json

    rows = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = (
            json.dumps(default, default=lambda m: m.model_dump(exclude_defaults=True))
            if isinstance(default, dict)
            else str(default)
        )
        rows.append(f"| `DARKROOM_{name.upper()}` | `{shown}` | {field.description} |")
    return _DOC_HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(configuration_markdown(), end="")
