"""`pip install darkroom` is the client alone: built from this checkout and installed into an
empty environment, it imports, speaks HTTP and checks callback signatures with two direct
dependencies, and its `darkroom` command names what to install for the server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER_PACKAGES = {"fastapi", "uvicorn", "sqlalchemy", "alembic", "asyncpg", "aiosqlite",
                   "pydantic", "pillow", "torch", "prometheus-client", "structlog", "typer"}  # fmt: skip

PROBE = """
import importlib.metadata as metadata, json, sys
from datetime import UTC, datetime
from pathlib import Path
from darkroom.client import APIConnectionError, Client, verify_callback
from standardwebhooks import Webhook
secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
body = b'{"id": "task-unified-1-abc", "status": "completed"}'
now = datetime.now(UTC)
headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())),
           "webhook-signature": Webhook(secret).sign("msg_1", now, body.decode())}
assert verify_callback(headers, body, secret)["status"] == "completed"
with Client(base_url="http://127.0.0.1:9", api_key="dk-x", max_retries=0) as client:
    try:
        client.tasks.get("task-unified-1-abc")
        raise SystemExit("no error from a closed port")
    except APIConnectionError:
        pass
site = Path(metadata.distribution("httpx").locate_file(""))
print(json.dumps({
    "packages": sorted(d.metadata["Name"].lower() for d in metadata.distributions()),
    "bytes": sum(p.stat().st_size for p in site.rglob("*") if p.is_file()),
    "server_modules": sorted(m for m in ("fastapi", "sqlalchemy", "pydantic") if m in sys.modules),
}))
"""


@pytest.mark.timeout(300)
def test_the_client_installs_alone_and_light(tmp_path: Path) -> None:
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(wheels), str(ROOT)],
        check=True, capture_output=True, timeout=240,
    )  # fmt: skip
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    [wheel] = wheels.glob("darkroom-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
         "--disable-pip-version-check", str(wheel)],
        check=True, capture_output=True, timeout=240,
    )  # fmt: skip
    probe = subprocess.run(
        [str(python), "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    found = json.loads(probe.stdout)
    names = set(found["packages"])
    assert {"darkroom", "httpx", "standardwebhooks"} <= names
    assert not names & SERVER_PACKAGES, names & SERVER_PACKAGES
    assert found["server_modules"] == []
    # httpx and standardwebhooks with what they pull in (9 distributions, 7 MB here); the
    # server's install is 42 distributions and a few hundred MB before its engine.
    assert len(names) <= 12, found["packages"]
    assert found["bytes"] < 15 * 2**20, found["bytes"]

    command = subprocess.run(
        [str(venv / "bin" / "darkroom"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert command.returncode == 1
    assert "pip install 'darkroom[server]'" in command.stderr
    assert "Traceback" not in command.stderr
