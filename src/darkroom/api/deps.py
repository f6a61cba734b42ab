"""FastAPI dependencies: the app's services and the calling principal."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from darkroom.accounts.keys import looks_like_key
from darkroom.accounts.store import Principal
from darkroom.api.services import Services
from darkroom.errors import Unauthorized


async def get_services(request: Request) -> Services:
    """The app's services. Async on purpose: FastAPI runs a plain `def` dependency on a worker
    thread, a hand-off per request that cost more than the rest of a poll's dependencies."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_principal(request: Request, services: ServicesDep) -> Principal:
    """The caller behind `Authorization: Bearer <key>`; 401 before anything else is read."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("Missing or malformed Authorization header; use 'Bearer <API key>'")
    if not looks_like_key(key):
        raise Unauthorized("Invalid API key")
    principal = await services.keys.authenticate(key)
    if principal is None:
        raise Unauthorized("Invalid or revoked API key")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]
