"""The OpenAPI document as the contract states it, and `/docs` served with no other host.

The create route parses its body by hand (`api/schemas.py`, so every refusal is the contract's
400); the models here only describe the wire for the document: FastAPI never validates with
them. `openapi_document` finishes FastAPI's document: the bearer scheme, the request id on
every answer, and no trace of the 422 body darkroom never sends.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from darkroom import __version__
from darkroom.contract import CALLBACK_URL_MAX, SEED_MAX, SIZES, FailureCode, Quality, Status
from darkroom.settings import Settings

DOCS_ASSETS = "/docs/assets"
BEARER = "bearerAuth"

INTRO = """\
A self-hosted image generation service that speaks the hosted `krea-2-turbo` task API: a client
written for the hosted service works here with only its base URL and key changed.

**Flow.** `POST /v1/images/generations` queues a task and answers at once with its id;
`GET /v1/tasks/{task_id}` polls it (or `GET /v1/tasks/{task_id}/events` streams it) until
`completed`, whose `results` are signed links valid for 24 hours. With `callback_url`, the same
body is POSTed to you, signed, when the task ends.

```sh
curl -s $DARKROOM_URL/v1/images/generations -H "Authorization: Bearer $DARKROOM_API_KEY" \\
  -H 'Content-Type: application/json' -d '{"model": "krea-2-turbo", "prompt": "a red fox"}'
curl -s $DARKROOM_URL/v1/tasks/task-unified-1751280000-k2t9x8a3 \\
  -H "Authorization: Bearer $DARKROOM_API_KEY"
```

**OpenAI-compatible.** `/openai/v1` serves OpenAI's Images API on the same keys, credits and
queue: `OpenAI(base_url=f"{DARKROOM_URL}/openai/v1", api_key=...)` then `images.generate(...)`
answers with the images themselves (its tag below).

**Errors** share one body: `{"error": {"code", "message", "type", "param"?}}`; `param` names the
offending field. Every answer carries `x-request-id` (yours, if you sent a sane one).
**Retries**: 429 and 503 carry `Retry-After`; send `Idempotency-Key` on a create to retry it
without being charged twice.
"""


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_request"])
    message: str = Field(examples=["size must be one of 1:1, 4:3, ..."])
    type: str = Field(examples=["invalid_request_error"])
    param: str | None = Field(default=None, examples=["size"])


class ErrorBody(BaseModel):
    """Every HTTP error, whatever its status."""

    error: ErrorDetail


class GenerationBody(BaseModel):
    """`POST /v1/images/generations`. Unknown fields are ignored; a field of the wrong JSON type
    is a 400 (no coercion: `"seed": "7"` is refused)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="A model this server serves", examples=["krea-2-turbo"])
    prompt: str = Field(
        min_length=1,
        pattern=r"\S",
        description="At most 640 tokens of the model's own tokenizer; not only whitespace. "
        "Refused by the content policy: 400 `content_policy_violation`.",
        examples=["a red fox in fresh snow, morning light"],
    )
    size: Literal[tuple(SIZES)] = Field(  # type: ignore[valid-type]
        default="1:1", description="Aspect ratio; the pixels follow from it and `quality`"
    )
    quality: Literal[tuple(q.value for q in Quality)] = Field(default="1K")  # type: ignore[valid-type]
    seed: int | None = Field(
        default=None,
        ge=0,
        le=SEED_MAX,
        description="0, null or absent: the server draws one (the task's `seed` tells which)",
    )
    nsfw_check: bool | None = Field(
        default=False, description="Stricter moderation: the prompt and the image are checked"
    )
    callback_url: str | None = Field(
        default=None,
        max_length=CALLBACK_URL_MAX,
        description="HTTPS, never an internal address; the task's body is POSTed here, signed",
        examples=["https://example.com/hooks/darkroom"],
    )


class TaskInfo(BaseModel):
    can_cancel: bool = Field(
        default=False,
        description="Whether POST /v1/tasks/{task_id}/cancel would cancel it: pending, and of a "
        "model the server lets callers cancel (krea-2-turbo: not, as the hosted API says)",
    )
    estimated_time: int | None = Field(
        default=None, ge=0, description="Seconds until the result; absent once finished"
    )
    queue_position: int | None = Field(
        default=None,
        ge=1,
        description="A darkroom extra, while pending: 1 means next. An upper bound: accounts "
        "take turns, so it may fall faster than the tasks ahead finish",
    )


class Usage(BaseModel):
    billing_rule: str = Field(examples=["per_call"])
    credits_reserved: float = Field(ge=0, examples=[0.45])
    user_group: str = Field(examples=["default"])
    credits_used: float | None = Field(default=None, ge=0, description="Completed tasks only")


class ResultData(BaseModel):
    url: str
    image_url: str = Field(description="The same link, under the name the hosted MCP server reads")


class TaskError(BaseModel):
    code: Literal[tuple(c.value for c in FailureCode)]  # type: ignore[valid-type]
    message: str
    type: Literal["task_error"]


class TaskBody(BaseModel):
    """A task, as a create, a poll, an event and a callback carry it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "created": 1751280000,
                    "id": "task-unified-1751280000-k2t9x8a3",
                    "model": "krea-2-turbo",
                    "object": "image.generation.task",
                    "progress": 0,
                    "seed": 421337,
                    "status": "pending",
                    "task_info": {"can_cancel": False, "estimated_time": 45},
                    "type": "image",
                    "usage": {
                        "billing_rule": "per_call",
                        "credits_reserved": 0.45,
                        "user_group": "default",
                    },
                }
            ]
        }
    )

    created: int = Field(description="Unix seconds")
    id: str = Field(pattern=r"^task-unified-\d{1,12}-[a-z0-9]{8}$")
    model: str
    object: Literal["image.generation.task"]
    progress: int = Field(ge=0, le=100)
    seed: int = Field(ge=0, le=SEED_MAX, description="The seed used (a darkroom extra)")
    status: Literal[tuple(s.value for s in Status)]  # type: ignore[valid-type]
    task_info: TaskInfo
    type: Literal["image"]
    usage: Usage
    results: list[str] | None = Field(
        default=None, description="Completed: links to the images, valid 24 hours"
    )
    result_data: list[ResultData] | None = Field(default=None, description="Completed")
    duration: int | None = Field(default=None, ge=0, description="Completed: seconds generating")
    error: TaskError | None = Field(default=None, description="Failed only")
    idempotency_replayed: bool | None = Field(
        default=None, description="A create answered from an earlier one with its Idempotency-Key"
    )


class Balance(BaseModel):
    remaining_credits: float
    used_credits: float


class KeyBalance(Balance):
    unlimited_credits: bool


class CreditsData(BaseModel):
    token: KeyBalance
    user: Balance


class CreditsBody(BaseModel):
    success: bool
    message: str
    data: CreditsData


_ERROR_WHEN = {
    400: "Invalid request (`param` names the field)",
    401: "No, malformed, unknown or revoked key",
    402: "Balance (the account's or the key's limit) below the price",
    403: "The key may not use this model, or the task is another account's",
    404: "No such task, or expired past retention",
    409: "The task cannot be cancelled: generating, ended, or its model's tasks cannot be",
    413: "Request body too large",
    429: "Request rate or concurrent-task limit hit; see Retry-After",
    500: "Unexpected; never a stack trace",
    503: "The model's queue is full or no worker serves it; see Retry-After",
    504: "The images were not ready within the server's wait; `task_ids` names their tasks",
}


Responses = dict[int | str, dict[str, Any]]


def error_responses(*statuses: int, ok: dict[str, Any] | None = None) -> Responses:
    """A route's `responses`: its 200 (`ok`) and these errors, all with the contract's body."""
    responses: Responses = {} if ok is None else {200: ok}
    responses.update({s: {"model": ErrorBody, "description": _ERROR_WHEN[s]} for s in statuses})
    return responses


def task_responses(*statuses: int) -> Responses:
    return error_responses(*statuses, ok={"model": TaskBody, "description": "The task"})


def generation_request_body(settings: Settings) -> dict[str, Any]:
    """The create route's `requestBody`, its `model` an enum of the models served."""
    schema = GenerationBody.model_json_schema(ref_template="#/components/schemas/{model}")
    schema["properties"]["model"]["enum"] = sorted(settings.models)
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def openapi_document(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """FastAPI's document, finished: the create body, bearer auth, `x-request-id`, no 422."""
    document = get_openapi(
        title="darkroom",
        version=__version__,
        summary="The krea-2-turbo image generation task API, self-hosted",
        description=INTRO,
        routes=app.routes,
    )
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    components["securitySchemes"] = {
        BEARER: {"type": "http", "scheme": "bearer", "description": "An API key: `dk-…`"}
    }
    components["headers"] = {
        "RequestId": {
            "description": "This request's id: the client's own if it sent a sane one",
            "schema": {"type": "string"},
        }
    }
    create = document["paths"]["/v1/images/generations"]["post"]
    create["requestBody"] = generation_request_body(settings)
    for path, operations in document["paths"].items():
        for operation in operations.values():
            operation["responses"].pop("422", None)
            if not path.startswith("/v1/files/"):
                operation["security"] = [{BEARER: []}]
            for response in operation["responses"].values():
                response.setdefault("headers", {})["x-request-id"] = {
                    "$ref": "#/components/headers/RequestId"
                }
    return document


def install_docs(app: FastAPI, settings: Settings) -> None:
    """`/openapi.json` as above and `/docs` (Swagger UI) with its assets from a package."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_document(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_assets()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="darkroom API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            # Swagger UI would otherwise ask validator.swagger.io about the document.
            swagger_ui_parameters={"validatorUrl": None, "tryItOutEnabled": True},
        )


def swagger_assets() -> Path:
    """Swagger UI's files, from the `fastapi-offline` package (no other host is asked)."""
    return Path(str(files("fastapi_offline") / "static"))
