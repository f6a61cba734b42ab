"""The ASGI application: `create_app(settings)` builds one, with its own database and storage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Protocol

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from darkroom import __version__
from darkroom.api.body import body_left_unread
from darkroom.api.events import install_events
from darkroom.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from darkroom.api.metrics import RequestObserver
from darkroom.api.metrics import render as render_metrics
from darkroom.api.openai_images import install_openai
from darkroom.api.openapi import install_docs
from darkroom.api.playground import install_playground
from darkroom.api.request_id import RequestIdMiddleware
from darkroom.api.routes import router
from darkroom.api.services import Services
from darkroom.api.task_control import router as task_control
from darkroom.clock import Clock
from darkroom.db.fingerprints import agree_on_secret
from darkroom.db.migrate import current_revision, head_revision, serves
from darkroom.errors import (
    DarkroomError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
)
from darkroom.settings import SecretRefused, Settings

log = structlog.get_logger("darkroom.api")


class ChildOfTheApp(Protocol):
    """Something that lives exactly as long as the app (e.g. the worker child of `serve`)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...


def create_app(
    settings: Settings,
    *,
    maintenance: bool = True,
    children: Sequence[ChildOfTheApp] = (),
    clock: Clock | None = None,
) -> FastAPI:
    """An app with its own services (on `clock`, default the system's); background duties
    start and stop with its lifespan."""
    services = Services.from_settings(settings, clock=clock)
    if not services.strict_check_available:
        log.warning(
            "moderation: the prompt screen is on; the image check is OFF (install "
            "darkroom[moderation] or set DARKROOM_MODERATION_IMAGE), so nsfw_check=true is refused"
        )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            await agree_on_secret(services.db, services.signer.secret)
        except SecretRefused as exc:
            log.error("cannot start", reason=str(exc))
            await services.db.dispose()
            raise
        duties: list[asyncio.Task[None]] = []
        if maintenance:
            duties.append(asyncio.create_task(services.maintenance().run_forever()))
            duties.append(asyncio.create_task(services.callback_sender().run_forever()))
        for child in children:
            child.start()
        try:
            yield
        finally:
            for child in children:
                await asyncio.to_thread(child.stop)
            for duty in duties:
                duty.cancel()
                with suppress(asyncio.CancelledError):
                    await duty
            await services.db.dispose()
            await asyncio.to_thread(services.tracing.shutdown)  # its last spans

    app = FastAPI(
        title="darkroom",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    app.include_router(router)
    app.include_router(task_control)
    install_events(app, services)
    install_openai(app, services)
    install_playground(app)
    install_docs(app, settings)
    app.add_middleware(RequestObserver, metrics=services.metrics, tracing=services.tracing)
    app.add_middleware(RequestIdMiddleware)
    _install_error_handlers(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        """The process answers (liveness): nothing else is touched."""
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> dict[str, str]:
        """Ready to serve: the database answers and its schema is this version's or a later
        release's (readiness, so a migration leaves the release before in service);
        503 in the contract's error shape otherwise, so a balancer sends traffic elsewhere."""
        try:
            current = await current_revision(services.db)
        except Exception as exc:
            log.warning("not ready: the database does not answer", error=str(exc)[:300])
            raise ServiceUnavailable("The database does not answer", retry_after=5) from None
        if not serves(current, head_revision()):
            raise ServiceUnavailable(
                f"The database schema is at {current or 'nothing'}, this version needs "
                f"{head_revision()}: run `darkroom migrate`",
                retry_after=30,
            )
        if services.rate_limiter.degraded:
            # Still ready: requests are served, their limits counted per process meanwhile.
            return {"status": "ready", "rate_limits": "per-process (Redis does not answer)"}
        return {"status": "ready"}

    if settings.metrics:

        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            return Response(await render_metrics(services), media_type=METRICS_CONTENT_TYPE)

    return app


def _error_response(error: DarkroomError) -> JSONResponse:
    return JSONResponse(error.to_body(), status_code=error.status, headers=error.headers())


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DarkroomError)
    async def on_darkroom_error(request: Request, exc: DarkroomError) -> JSONResponse:
        response = _error_response(exc)
        if body_left_unread(request):
            response.headers["Connection"] = "close"  # uvicorn closes the socket after it
        return response

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        return _error_response(InvalidRequest(f"{param or 'request'} is invalid", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = exc.headers or {}
        if exc.status_code == 404:
            return _error_response(NotFound(f"No such endpoint: {request.url.path}"))
        if exc.status_code == 405:
            allow = headers.get("Allow", "")
            return _error_response(
                MethodNotAllowed(
                    f"{request.method} is not allowed here; allowed: {allow}", allow=allow
                )
            )
        error = DarkroomError(str(exc.detail))
        body = error.to_body()
        body["error"]["code"] = "invalid_request" if exc.status_code < 500 else "internal_error"
        body["error"]["type"] = "invalid_request_error" if exc.status_code < 500 else "api_error"
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def on_unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return _error_response(DarkroomError())
