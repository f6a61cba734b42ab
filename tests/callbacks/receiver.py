"""A real HTTPS callback receiver on loopback, with certificates from trustme, scripted answers."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import trustme

HOSTS = ("hooks.test", "fast.test", "localhost", "127.0.0.1")


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    port: int
    ca_file: Path
    # One answer per request, in order; the last repeats. An int is a status; ("hang", s) sleeps
    # s seconds before answering 200; ("redirect", url) answers 302 to url.
    script: list[int | tuple[str, object]] = field(default_factory=lambda: [200])
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, host: str = "hooks.test", path: str = "/hook") -> str:
        return f"https://{host}:{self.port}{path}"

    def count(self) -> int:
        with self.lock:
            return len(self.received)

    def wait_for(self, n: int, timeout_s: float = 60) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while self.count() < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver got {self.count()} requests, expected {n}")
            time.sleep(0.05)
        with self.lock:
            return list(self.received)


@contextmanager
def https_receiver(tmp_path: Path, script: list[int | tuple[str, object]]) -> Iterator[Receiver]:
    ca = trustme.CA()
    cert = ca.issue_cert(*HOSTS)
    ca_file = tmp_path / "callback-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    receiver = Receiver(port=0, ca_file=ca_file, script=list(script))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            with receiver.lock:
                index = len(receiver.received)
                receiver.received.append(
                    Received(time.monotonic(), self.path, dict(self.headers.items()), body)
                )
                answer = receiver.script[min(index, len(receiver.script) - 1)]
            headers: dict[str, str] = {}
            status = 200
            if isinstance(answer, int):
                status = answer
            elif answer[0] == "hang":
                time.sleep(float(answer[1]))  # type: ignore[arg-type]
            elif answer[0] == "redirect":
                status, headers = 302, {"Location": str(answer[1])}
            payload = b"ok"
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                pass  # the sender gave up (timeout) and closed the connection

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    receiver.port = server.server_address[1]
    # Shut down within a twentieth of a second (the default poll is half a second per test).
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
