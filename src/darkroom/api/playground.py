"""`/playground`: a page to try prompts, served from this package (no build step, no other host).

The page talks to the public API with the key its user types (kept in the browser's local
storage). Its Content-Security-Policy lets it load nothing but its own files and connect
nowhere but here; only result images may come from elsewhere (a bucket's presigned links).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

PAGE_DIR = Path(__file__).parent / "playground"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: https: http:; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


class PageFiles(StaticFiles):
    """The page's files, each with the policy above and revalidated on every load."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def install_playground(app: FastAPI) -> None:
    @app.get("/playground", include_in_schema=False)
    async def playground() -> RedirectResponse:
        return RedirectResponse("/playground/")

    app.mount("/playground/", PageFiles(directory=PAGE_DIR, html=True), name="playground")
