"""Which callback URLs are acceptable at submit time: HTTPS, bounded, never an internal address."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from darkroom.contract import CALLBACK_URL_MAX
from darkroom.errors import InvalidRequest


def check_callback_url(url: str) -> None:
    """Raise InvalidRequest (param `callback_url`) unless `url` may receive a callback."""

    def refuse(reason: str) -> InvalidRequest:
        return InvalidRequest(f"callback_url {reason}", param="callback_url")

    if len(url) > CALLBACK_URL_MAX:
        raise refuse(f"must be at most {CALLBACK_URL_MAX} characters")
    if not url.isascii() or any(c.isspace() or c == "\\" for c in url):
        raise refuse("must be a plain ASCII URL")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port
    except ValueError:
        raise refuse("is not a valid URL") from None
    if parts.scheme != "https":
        raise refuse("must use https")
    if not host or parts.username is not None or parts.password is not None:
        raise refuse("must name a host and no credentials")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
            raise refuse("must not point to an internal address") from None
        return
    if not address.is_global or address.is_multicast:
        raise refuse("must not point to an internal address")
