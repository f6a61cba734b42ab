"""Which callback URLs are acceptable: HTTPS, bounded, to a public host, spelled plainly.

A URL passes `parse` (its form) at submit time; its host's addresses pass `resolve_allowed`
(our deny list, on every answer) at submit time and again by the sender, which then dials
exactly the address it checked. Hosts are compared after IDNA/UTS-46 mapping, so full-width
dots and other look-alikes reach the same checks as the plain spelling. Anything an HTTP
client might read as an IPv4 address other than a strict dotted quad (`2130706433`,
`0x7f.1`, `0177.0.0.1`, `127.1`) is refused rather than guessed at.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import idna

from darkroom.callbacks.addresses import IPAddress, refusal
from darkroom.contract import CALLBACK_URL_MAX
from darkroom.errors import InvalidRequest

_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa", ".arpa", ".lan")
_HEX = frozenset("0123456789abcdef")


class CallbackRefused(Exception):
    """This callback URL or address must not be used; the message says why."""


class HostUnresolved(CallbackRefused):
    """The host gave no address (now): nothing to check, nothing to send to."""


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed callback URL: where to connect and what to ask for there."""

    scheme: str
    host: str  # ASCII (IDNA) name or IP literal, without brackets
    port: int
    path: str  # path and query, never empty
    literal: IPAddress | None

    @property
    def netloc(self) -> str:
        """`host[:port]` as a URL and a Host header write it: an IPv6 literal in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> Sequence[IPAddress]: ...


class SystemResolver:
    """The operating system's resolver (getaddrinfo), off the event loop."""

    async def resolve(self, host: str, port: int) -> Sequence[IPAddress]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return [ipaddress.ip_address(info[4][0]) for info in infos]


def _ends_in_a_number(host: str) -> bool:
    """WHATWG's test: such a host is parsed as IPv4 by browsers and many HTTP clients."""
    last = host.rstrip(".").rsplit(".", 1)[-1]
    if last.isdigit():
        return True
    return last[:2] == "0x" and all(c in _HEX for c in last[2:])


def parse(url: str, *, allow_private: bool = False) -> Target:
    """The URL's parts, or CallbackRefused. `allow_private`: development only (http, any host)."""
    if len(url) > CALLBACK_URL_MAX:
        raise CallbackRefused(f"must be at most {CALLBACK_URL_MAX} characters")
    if any(not c.isprintable() or c.isspace() or c == "\\" for c in url):
        raise CallbackRefused("must not contain spaces, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise CallbackRefused("is not a valid URL") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise CallbackRefused("must use https")
    if "@" in parts.netloc:
        raise CallbackRefused("must not carry credentials")
    raw_host = parts.hostname
    if not raw_host:
        raise CallbackRefused("must name a host")
    rest = parts.path or "/"
    if parts.query:
        rest += "?" + parts.query
    if not rest.isascii():
        raise CallbackRefused("must percent-encode its path")
    port = port if port is not None else (443 if parts.scheme == "https" else 80)
    if not 0 < port < 65536:
        raise CallbackRefused("has an invalid port")
    literal: IPAddress | None
    if parts.netloc.startswith("["):
        if "%" in raw_host:
            raise CallbackRefused("must not use an IPv6 zone")
        try:
            literal = ipaddress.IPv6Address(raw_host)
        except ValueError:
            raise CallbackRefused("has an invalid IPv6 address") from None
        host = literal.compressed
    else:
        try:
            host = idna.encode(raw_host, uts46=True, std3_rules=True).decode("ascii").lower()
        except (idna.IDNAError, UnicodeError):
            raise CallbackRefused("has an invalid host name") from None
        host = host.rstrip(".")
        literal = None
        if _ends_in_a_number(host):
            try:
                literal = ipaddress.IPv4Address(host)
            except ValueError:
                raise CallbackRefused("must spell an IPv4 address as four decimals") from None
        elif not allow_private and (
            "." not in host or host == "localhost" or host.endswith(_INTERNAL_SUFFIXES)
        ):
            raise CallbackRefused("must not name an internal host")
    if literal is not None and not allow_private and (why := refusal(literal)):
        raise CallbackRefused(f"must not point to an internal address ({why})")
    return Target(parts.scheme, host, port, rest, literal)


async def resolve_allowed(
    target: Target, resolver: Resolver, *, allow_private: bool = False
) -> list[IPAddress]:
    """The host's addresses, all of them allowed; CallbackRefused if any one is not.

    One bad answer refuses the host: a name that mixes public and private answers is an attack
    (or a misconfiguration) either way, and the client's resolver might pick the bad one.
    """
    if target.literal is not None:
        return [target.literal]
    try:
        answers = list(await resolver.resolve(target.host, target.port))
    except (OSError, UnicodeError) as exc:
        raise HostUnresolved(f"host {target.host} does not resolve ({exc})") from None
    if not answers:
        raise HostUnresolved(f"host {target.host} has no addresses")
    if not allow_private:
        for address in answers:
            if why := refusal(address):
                raise CallbackRefused(
                    f"host {target.host} resolves to an internal address ({address}: {why})"
                )
    return answers


async def check_at_submit(
    url: str, resolver: Resolver, *, allow_private: bool = False, resolve_timeout_s: float = 2.0
) -> None:
    """InvalidRequest (param `callback_url`) unless `url` may receive a callback.

    A host that does not resolve now is accepted (DNS may be down for a moment, and the sender
    checks again before every attempt); a host that resolves to an internal address is not.
    """
    try:
        target = parse(url, allow_private=allow_private)
    except CallbackRefused as exc:
        raise InvalidRequest(f"callback_url {exc}", param="callback_url") from None
    try:
        async with asyncio.timeout(resolve_timeout_s):
            await resolve_allowed(target, resolver, allow_private=allow_private)
    except (TimeoutError, HostUnresolved):
        return
    except CallbackRefused as exc:
        raise InvalidRequest(f"callback_url {exc}", param="callback_url") from None
