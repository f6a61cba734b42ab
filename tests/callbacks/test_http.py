"""The callback POST on the wire: what a receiver at an IPv6 literal sees, how long connecting
may take."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading

import httpcore
import pytest

from darkroom.callbacks.http import CONNECT_TIMEOUT_S, post
from darkroom.callbacks.policy import parse


def _one_request(server: socket.socket, seen: list[bytes]) -> None:
    conn, _ = server.accept()
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096)
        seen.append(head)
        conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")


async def test_the_host_header_of_an_ipv6_literal_is_bracketed() -> None:
    with socket.socket(socket.AF_INET6) as server:
        server.bind(("::1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        seen: list[bytes] = []
        thread = threading.Thread(target=_one_request, args=(server, seen))
        thread.start()
        target = parse(f"http://[::1]:{port}/hook?a=1", allow_private=True)
        answer = await post(
            target,
            ipaddress.IPv6Address("::1"),
            b"{}",
            {"Content-Type": "application/json"},
            ssl_context=ssl.create_default_context(),
        )
        thread.join(10)
    assert answer.status == 204
    lines = seen[0].decode().split("\r\n")
    assert lines[0] == "POST /hook?a=1 HTTP/1.1"
    hosts = [line for line in lines if line.lower().startswith("host:")]
    assert hosts == [f"Host: [::1]:{port}"]


async def test_a_receiver_that_accepts_but_never_handshakes_times_out_connecting() -> None:
    """Connecting (TCP and TLS) has its own bound, shorter than the attempt's 10 s: a silent
    receiver ends the attempt with ConnectTimeout, not with the whole attempt's TimeoutError."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)  # accepted by the kernel; nothing ever answers the TLS hello
        target = parse(f"https://hooks.test:{server.getsockname()[1]}/hook", allow_private=True)
        with pytest.raises(httpcore.ConnectTimeout):
            await post(
                target,
                ipaddress.IPv4Address("127.0.0.1"),
                b"{}",
                {},
                ssl_context=ssl.create_default_context(),
                timeout_s=CONNECT_TIMEOUT_S + 30,
            )
