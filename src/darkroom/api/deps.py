"""What every handler starts from: the app's services and the calling principal.

Plain calls at the top of each handler rather than FastAPI dependencies: resolving `Depends`
costs each request more than the key lookup itself (a cache hit), and these routes sit on the
hottest path (a client polls every second or so). The OpenAPI document's bearer scheme is
declared in `openapi.py`, not derived from these.
"""

from __future__ import annotations

from fastapi import Request

from darkroom.accounts.keys import looks_like_key
from darkroom.accounts.store import Principal
from darkroom.api.services import Services
from darkroom.errors import Unauthorized


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def caller(request: Request, services: Services) -> Principal:
    """The caller behind `Authorization: Bearer <key>`; 401 before anything else is read."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("Missing or malformed Authorization header; use 'Bearer <API key>'")
    address = request.client.host if request.client else "unknown"
    failures = services.failed_auths
    if failures.blocked(address):
        # No database read for this address until its failures age: a key this process
        # already knows to be live still works.
        principal = services.keys.known(key)
        if principal is None:
            raise failures.refusal(address)
        return principal
    if not looks_like_key(key):
        await failures.failed(address)
        raise Unauthorized("Invalid API key")
    principal = await services.keys.authenticate(key)
    if principal is None:
        await failures.failed(address)
        raise Unauthorized("Invalid or revoked API key")
    return principal
