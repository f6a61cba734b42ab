"""A real `darkroom serve` for the client tests (the SDK and `darkroom generate`), one per run
of this package, with an HTTPS receiver for its callbacks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.callbacks.receiver import Receiver, https_receiver
from tests.e2e.procs import create_key, service_env, serving


@dataclass
class Server:
    url: str
    env: dict[str, str]
    receiver: Receiver
    key: str


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("sdk")
    with https_receiver(tmp, [200]) as receiver:
        env = service_env(
            tmp / "data",
            f"sqlite+aiosqlite:///{tmp}/sdk.db",
            tiny_model_dir,
            DARKROOM_CALLBACK_ALLOW_PRIVATE="true",
            DARKROOM_CALLBACK_CA_FILE=str(receiver.ca_file),
            DARKROOM_CALLBACK_POLL_INTERVAL_S="0.1",
        )
        key = create_key(env, "sdk")
        with serving("serve", env, tmp / "serve.log") as service:
            yield Server(service.base_url, env, receiver, key)
