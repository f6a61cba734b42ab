"""Serving the app with uvicorn: cutting off clients too slow to send their request headers,
and refusing connections beyond a per-process cap in the contract's shape.

uvicorn bounds an idle keep-alive connection, but not one that trickles its request line and
headers a byte at a time: every byte resets nothing, and such connections stay open forever
(thousands of them hold thousands of sockets: slowloris). Here each request's headers must be
whole within `header_timeout_s` of the connection opening, or of the previous response ending.

A process holds at most `max_connections` client connections. One more is answered at once
with the contract's 503 (`service_unavailable`, `Retry-After: 1`) and closed, before anything
of it is read: the process keeps file descriptors for its database, its results and its
logs, and every other client keeps being served. (uvicorn's own `limit_concurrency` answers a
plain-text 503 that no client of the contract can parse, and counts requests, not sockets.)
"""

from __future__ import annotations

import asyncio
import json
import resource
from types import FrameType

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from darkroom.errors import ServiceUnavailable

# File descriptors a process keeps beside its client connections: database connections, result
# files, logs, the worker child's pipes.
RESERVED_FDS = 128
# Seconds a refused connection is read and dropped before it is closed.
LINGER_S = 2.0


def _refusal() -> bytes:
    error = ServiceUnavailable("This server has as many connections open as it takes; retry")
    body = json.dumps(error.to_body()).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


REFUSAL = _refusal()


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's headers."""

    header_timeout_s: float = 10.0
    max_connections: int | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # counts it in server_state.connections
        self._header_deadline: asyncio.TimerHandle | None = None
        self._refused = False
        cap = self.max_connections
        if cap is not None and len(self.server_state.connections) > cap:
            self._refuse(cap)
            return
        self._arm_header_deadline()

    def _refuse(self, cap: int) -> None:
        """Answer 503 and close, lingering: the client's request is read and dropped for up
        to `LINGER_S` after the answer, so that closing with it unread (which resets the
        connection) does not destroy the answer before the client reads it."""
        self.logger.warning("refusing a connection: %d open, the cap", cap)
        self._refused = True
        self.transport.write(REFUSAL)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped: the answer is already on its way
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are in: the request runs
            self._disarm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_header_deadline()  # the next request on this connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _too_slow(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("closing a connection whose request headers took too long")
            self.transport.close()


class DrainingServer(uvicorn.Server):
    """uvicorn's server that, on SIGTERM or SIGINT, also tells the app (`app.state.draining`),
    so long-lived answers (event streams) end and their clients reconnect to another process;
    requests in flight finish, up to `drain_s`."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        draining = getattr(self.app.state, "draining", None)
        if draining is not None:
            draining.set()
        super().handle_exit(sig, frame)


def connection_cap(wanted: int) -> int:
    """`wanted`, if the process may open that many files beside its own: the soft limit on open
    files is raised towards the hard one as needed, and the cap lowered to fit what it allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + RESERVED_FDS
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - RESERVED_FDS))


def serve(
    app: FastAPI,
    host: str,
    port: int,
    *,
    header_timeout_s: float,
    max_connections: int | None = None,
    drain_s: float = 30,
) -> None:
    """Run `app` on `host:port` until SIGTERM or SIGINT, then drain it."""
    cap = None if max_connections is None else connection_cap(max_connections)
    if cap is not None and max_connections is not None and cap < max_connections:
        uvicorn.config.logger.warning(
            "the open-file limit allows %d client connections, not %d", cap, max_connections
        )
    protocol = type(
        "HeaderDeadlineProtocol",
        (HeaderDeadlineProtocol,),
        {"header_timeout_s": header_timeout_s, "max_connections": cap},
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        # uvicorn's lines go to the root logger, through darkroom's renderer and level
        # (darkroom/logging.py), instead of uvicorn's own handlers.
        log_config=None,
        log_level=None,
        http=protocol,
        timeout_graceful_shutdown=int(drain_s),
    )
    DrainingServer(config, app).run()
