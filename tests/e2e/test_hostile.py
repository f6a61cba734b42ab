"""Hostile requests against a running `darkroom api` over real HTTP: each gets the contract's
error, nothing is stored or charged, and /healthz keeps answering throughout."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, func, select

from darkroom.accounts.store import Account, AccountStore
from darkroom.api.server import RESERVED_FDS
from darkroom.db.database import Database
from darkroom.db.schema import tasks
from tests.conftest import on_database

from .procs import Service, cli, create_key, service_env, serving


@pytest.fixture
def api(tmp_path: Path, database_url: str, tiny_model_dir: Path) -> Iterator[tuple[Service, str]]:
    env = service_env(
        tmp_path / "data", database_url, tiny_model_dir, DARKROOM_HEADER_TIMEOUT_S="1"
    )
    key = create_key(env, "mallory")
    with serving("api", env, tmp_path / "api.log") as service:
        yield service, key


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# Raw bodies, as an attacker writes them: each must be a 400 naming what is wrong.
BODIES: dict[str, tuple[bytes, str | None]] = {
    "nesting inside an ignored field": (
        ('{"model": "krea-2-turbo", "prompt": "p", "x": ' + _nested(500) + "}").encode(),
        None,
    ),
    "nesting past the parser's recursion": (_nested(20_000).encode(), None),
    "a 5000-digit integer in an ignored field": (
        b'{"model": "krea-2-turbo", "prompt": "p", "x": ' + b"9" * 5000 + b"}",
        None,
    ),
    "a 1000-digit seed": (
        b'{"model": "krea-2-turbo", "prompt": "p", "seed": ' + b"1" * 1000 + b"}",
        None,
    ),
    "an infinite number": (b'{"model": "krea-2-turbo", "prompt": "p", "x": 1e999}', None),
    "NaN": (b'{"model": "krea-2-turbo", "prompt": "p", "x": NaN}', None),
    "a lone surrogate in the prompt": (
        b'{"model": "krea-2-turbo", "prompt": "a\\ud800b"}',
        "prompt",
    ),
    "a lone surrogate in the model": (b'{"model": "\\udfff", "prompt": "p"}', "model"),
    "a lone surrogate in a key": (b'{"model": "krea-2-turbo", "prompt": "p", "\\ud800": 1}', None),
    "NUL in the prompt": (b'{"model": "krea-2-turbo", "prompt": "a\\u0000b"}', "prompt"),
    "bytes that are not UTF-8": (b'{"model": "krea-2-turbo", "prompt": "\xff\xfe"}', None),
}


def _create(service: Service, key: str, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{service.base_url}/v1/images/generations",
        content=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=30,
    )


def _assert_contract_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert {"code", "message", "type"} <= set(body["error"])
    return body["error"]


def test_hostile_bodies_get_400_and_change_nothing(
    api: tuple[Service, str], database_url: str
) -> None:
    service, key = api
    for name, (body, param) in BODIES.items():
        error = _create(service, key, body)
        detail = _assert_contract_error(error, 400, "invalid_request")
        if param is not None:
            assert detail.get("param") == param, (name, detail)
        assert httpx.get(f"{service.base_url}/healthz", timeout=5).status_code == 200, name

    async def stored(db: Database) -> tuple[int, list[Account]]:
        def count(conn: Connection) -> int:
            found: int = conn.execute(select(func.count()).select_from(tasks)).scalar_one()
            return found

        return await db.read(count), await AccountStore(db).list_accounts()

    task_count, accounts = on_database(database_url, stored)
    assert task_count == 0, "nothing was stored"
    assert all(a.used_micro == 0 for a in accounts), "nothing was charged"
    assert "Traceback" not in service.log()


def test_links_paths_and_methods_answer_in_the_contracts_shape(api: tuple[Service, str]) -> None:
    service, _ = api
    base = service.base_url
    for signature in ("%C3%A9" * 32, "%ED%A0%80", "%FF"):
        response = httpx.get(f"{base}/v1/files/x/1.png?expires=4000000000&signature={signature}")
        _assert_contract_error(response, 403, "permission_denied")
    _assert_contract_error(httpx.get(f"{base}/v1/no/such/path"), 404, "not_found")
    wrong = httpx.delete(f"{base}/v1/images/generations")
    _assert_contract_error(wrong, 405, "method_not_allowed")
    assert wrong.headers["allow"] == "POST"
    assert "GET" in httpx.post(f"{base}/v1/tasks/task-unified-1-abcdefgh").headers["allow"]


def test_clients_trickling_their_headers_are_cut_off_and_slow_ones_served(
    api: tuple[Service, str],
) -> None:
    service, _ = api
    host, port = service.base_url.removeprefix("http://").split(":")
    sockets = []
    for _ in range(50):
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        sockets.append(s)
    closed: list[bool] = []

    def trickle(s: socket.socket) -> None:
        s.settimeout(0.3)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                s.sendall(b"X")
                if s.recv(1) == b"":
                    closed.append(True)
                    return
            except TimeoutError:
                continue
            except OSError:
                closed.append(True)
                return
        closed.append(False)

    threads = [threading.Thread(target=trickle, args=(s,)) for s in sockets]
    for thread in threads:
        thread.start()
    # The server keeps answering everyone else meanwhile.
    assert httpx.get(f"{service.base_url}/healthz", timeout=5).status_code == 200
    for thread in threads:
        thread.join(30)
    for s in sockets:
        s.close()
    assert closed == [True] * 50, "each trickling connection was closed by the server"
    assert httpx.get(f"{service.base_url}/healthz", timeout=5).status_code == 200

    # The deadline is per request's headers: a slow client that sends them in time is served.
    with socket.create_connection((host, int(port)), timeout=10) as s:
        for part in (b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
            s.sendall(part)
            time.sleep(0.2)
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"status": "ok"}


def test_a_trickling_body_refused_early_frees_its_socket(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A client that declares a body and trickles it is answered early (429 before the body is
    read, 400 once the body timeout passes), and the server closes the connection after that
    answer, while the client is still sending: it does not get to hold the socket."""
    env = service_env(
        tmp_path / "data",
        f"sqlite+aiosqlite:///{tmp_path}/t.db",
        tiny_model_dir,
        DARKROOM_BODY_TIMEOUT_S="1",
    )
    key = create_key(env, "trickle")
    out = cli(env, "keys", "create", "--account", "trickle", "--rate-limit", "1/minute").stdout
    limited = out.strip().splitlines()[-1]
    with serving("api", env, tmp_path / "api.log") as service:
        host, port = service.base_url.removeprefix("http://").split(":")
        # One create a minute for `limited`: spend it, so the next is refused before its body.
        spent = httpx.post(
            f"{service.base_url}/v1/images/generations",
            json={"model": "krea-2-turbo", "prompt": "x"},
            headers={"Authorization": f"Bearer {limited}"},
        )
        assert spent.status_code == 200, spent.text

        def trickled(auth: str) -> tuple[bytes, bool]:
            """The answer, and whether the server closed while the client kept sending."""
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(
                    b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n"
                    b"Authorization: Bearer " + auth.encode() + b"\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
                )
                s.settimeout(0.2)
                answer, deadline = b"", time.monotonic() + 20
                while time.monotonic() < deadline:
                    try:
                        s.sendall(b" ")
                        chunk = s.recv(65536)
                    except TimeoutError:
                        continue
                    except OSError:
                        return answer, True
                    if chunk == b"":
                        return answer, True
                    answer += chunk
                return answer, False

        answer, closed = trickled(key)
        assert answer.startswith(b"HTTP/1.1 400") and b"connection: close" in answer.lower()
        assert b"not received within 1 s" in answer and closed, answer
        answer, closed = trickled(limited)
        assert answer.startswith(b"HTTP/1.1 429") and closed, answer


def test_connections_beyond_the_cap_get_the_contracts_503(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A process holds at most DARKROOM_MAX_CONNECTIONS client sockets: one more is answered
    503 `service_unavailable` with Retry-After and closed; once the others go, it serves."""
    env = service_env(
        tmp_path / "data",
        f"sqlite+aiosqlite:///{tmp_path}/t.db",
        tiny_model_dir,
        DARKROOM_MAX_CONNECTIONS="20",
        DARKROOM_HEADER_TIMEOUT_S="60",
    )
    cli(env, "migrate")
    with serving("api", env, tmp_path / "api.log") as service:
        host, port = service.base_url.removeprefix("http://").split(":")
        held = [socket.create_connection((host, int(port)), timeout=10) for _ in range(20)]
        try:
            time.sleep(0.5)  # the server has accepted them all
            with httpx.Client(base_url=service.base_url, timeout=10) as client:
                refused = client.get("/healthz")
            assert refused.headers["retry-after"] == "1"
            assert refused.headers["connection"] == "close"
            _assert_contract_error(refused, 503, "service_unavailable")
        finally:
            for s in held:
                s.close()
        deadline = time.monotonic() + 10
        while (answer := httpx.get(f"{service.base_url}/healthz", timeout=5)).status_code != 200:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.1)
        assert "refusing a connection" in service.log()


def test_the_connection_cap_fits_the_open_file_limit() -> None:
    """Raised towards the hard limit when the soft one is short; lowered, when even the hard
    one is, to what it allows beside the process's own files."""
    script = (
        "import resource\n"
        "from darkroom.api.server import RESERVED_FDS, connection_cap\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "assert connection_cap(300) == 300\n"
        "assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 300 + RESERVED_FDS\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (400, 400))\n"
        "print(connection_cap(1000))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == str(400 - RESERVED_FDS)
