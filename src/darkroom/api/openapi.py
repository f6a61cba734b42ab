"""The OpenAPI document as the contract states it, and `/docs` served with no other host.

The models are the wire's own (`darkroom.wire`): the create route validates its body with the
one the document shows (by hand, `api/schemas.py`, so every refusal is the contract's 400), and
the task's body is rendered through the one its answers show. `openapi_document` finishes FastAPI's document: the bearer scheme, the request id on
every answer, and no trace of the 422 body darkroom never sends.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from darkroom import __version__
from darkroom.settings import Settings
from darkroom.wire import ErrorBody, GenerationRequest, TaskBody

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
    schema = GenerationRequest.model_json_schema(ref_template="#/components/schemas/{model}")
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
