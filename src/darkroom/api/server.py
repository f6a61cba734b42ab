"""Serving the app with uvicorn, and cutting off clients too slow to send their request headers.

uvicorn bounds an idle keep-alive connection, but not one that trickles its request line and
headers a byte at a time: every byte resets nothing, and such connections stay open forever
(thousands of them hold thousands of sockets: slowloris). Here each request's headers must be
whole within `header_timeout_s` of the connection opening, or of the previous response ending.
"""

from __future__ import annotations

import asyncio
from types import FrameType

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's headers."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
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


def serve(
    app: FastAPI, host: str, port: int, *, header_timeout_s: float, drain_s: float = 30
) -> None:
    """Run `app` on `host:port` until SIGTERM or SIGINT, then drain it."""
    protocol = type(
        "HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": header_timeout_s}
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        http=protocol,
        timeout_graceful_shutdown=int(drain_s),
    )
    DrainingServer(config, app).run()
