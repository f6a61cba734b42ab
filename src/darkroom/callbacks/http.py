"""One HTTP POST to exactly the address the policy checked, with the URL's name for TLS and Host.

httpcore is httpx's transport layer: it never reads proxy variables, never follows redirects,
and lets us replace the network backend, so `connect_tcp(host)` dials the pinned address
while TLS verification (SNI, certificate name) and the Host header keep the URL's name.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpcore

from darkroom.callbacks.addresses import IPAddress
from darkroom.callbacks.policy import Target

# The contract: 10 s per attempt, connect to last byte.
ATTEMPT_TIMEOUT_S = 10.0
# Of which connecting (TCP and the TLS handshake) may take this much: a receiver that cannot
# accept a connection in 3 s is down, and should not hold a slot of the pool for 10.
CONNECT_TIMEOUT_S = 3.0
# A receiver's answer is read only to end the exchange; nothing in it is used.
MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Every TCP connection goes to one checked address, whatever host name it was asked for."""

    def __init__(self, address: IPAddress) -> None:
        self._address = str(address)
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self._inner.connect_tcp(
            self._address, port, timeout, local_address, socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise OSError("callbacks never use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def tls_context(extra_ca_file: Path | None = None) -> ssl.SSLContext:
    """The system's trust store (plus an operator's private CA), hostname checks on."""
    context = ssl.create_default_context()
    if extra_ca_file is not None:
        context.load_verify_locations(cafile=str(extra_ca_file))
    return context


async def post(
    target: Target,
    address: IPAddress,
    body: bytes,
    headers: dict[str, str],
    *,
    ssl_context: ssl.SSLContext,
    timeout_s: float = ATTEMPT_TIMEOUT_S,
) -> Answer:
    """POST `body` to `target` at `address`; TimeoutError after `timeout_s`, httpcore's
    ConnectTimeout when connecting (TCP and TLS) takes over `CONNECT_TIMEOUT_S`, OSError-likes
    (httpcore's errors) for other network and TLS failures."""
    # httpcore would write an IPv6 literal's Host without its brackets (RFC 9110 wants them).
    request_headers = [(b"Host", target.netloc.encode())]
    request_headers += [(k.encode(), v.encode()) for k, v in headers.items()]
    request_headers.append((b"Connection", b"close"))
    connect_s = min(timeout_s, CONNECT_TIMEOUT_S)
    per_step = {"connect": connect_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}
    with anyio.fail_after(timeout_s):
        async with (
            httpcore.AsyncConnectionPool(
                ssl_context=ssl_context,
                network_backend=_PinnedBackend(address),
                max_connections=1,
                retries=0,
            ) as pool,
            pool.stream(
                "POST",
                target.url,
                headers=request_headers,
                content=body,
                extensions={"timeout": per_step},
            ) as response,
        ):
            received = bytearray()
            async for chunk in response.aiter_stream():
                received += chunk
                if len(received) >= MAX_RESPONSE_BYTES:
                    break
            return Answer(response.status, bytes(received[:MAX_RESPONSE_BYTES]))
