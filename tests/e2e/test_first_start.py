"""The first start of a fresh install is offline: no host is contacted, and the 640-token limit
holds from the first request. Any attempt to reach the Hugging Face hub lands on a listener here
(HF_ENDPOINT), which counts it."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import darkroom_cmd

from .procs import serving


class Listener:
    """A TCP port that accepts and counts connections: a hub that must never be called."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


@pytest.fixture
def hub() -> Iterator[Listener]:
    listener = Listener()
    yield listener
    listener.sock.close()


def fresh_env(hub: Listener, home: Path, **extra: str) -> dict[str, str]:
    """The environment of `make run` on a fresh machine, its hub pointed at the listener."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DARKROOM_", "HF_"))}
    env.update(
        {
            "HF_ENDPOINT": f"http://127.0.0.1:{hub.port}",
            "HF_HOME": str(home / "hf-cache"),  # an empty cache, as on a fresh machine
            "DARKROOM_ENGINE": "tiny",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    return env


@pytest.mark.slow
def test_a_fresh_serve_reaches_no_host_and_limits_prompts_from_the_first_request(
    tmp_path: Path, hub: Listener
) -> None:
    env = fresh_env(hub, tmp_path)
    # A relative data folder, as `make run` uses: its tiny model's path is a path, not a hub id.
    subprocess.run(
        [*darkroom_cmd(), "accounts", "create", "first", "--credits", "10"],
        env=env, cwd=tmp_path, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    made = subprocess.run(
        [*darkroom_cmd(), "keys", "create", "--account", "first"],
        env=env, cwd=tmp_path, check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    key = made.stdout.strip().splitlines()[-1]
    with serving("serve", env, tmp_path / "serve.log", cwd=tmp_path) as service:
        too_long = httpx.post(
            f"{service.base_url}/v1/images/generations",
            json={"model": "krea-2-turbo", "prompt": "lighthouse " * 2000},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert too_long.status_code == 400, too_long.text
        assert too_long.json()["error"]["param"] == "prompt"
        assert "Prompt is too long" in too_long.json()["error"]["message"]
        deadline = 120.0
        while "worker ready" not in service.log() and deadline > 0:
            threading.Event().wait(0.2)
            deadline -= 0.2
        assert "worker ready" in service.log(), service.log()
    assert hub.connections == 0, "nothing tried to reach the hub"
    secret = tmp_path / "darkroom-data" / "signing-secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_missing_weights_with_the_hub_offline_fail_at_once_with_the_fix(
    tmp_path: Path, hub: Listener
) -> None:
    env = fresh_env(hub, tmp_path, DARKROOM_ENGINE="krea2", HF_HUB_OFFLINE="1")
    env["DARKROOM_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run(
        [*darkroom_cmd(), "worker"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 78, done.stderr
    assert "HF_HUB_OFFLINE is set" in done.stderr
    assert "DARKROOM_MODEL_PATH" in done.stderr
    assert hub.connections == 0
