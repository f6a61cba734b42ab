"""A real `darkroom serve` for the client tests (the SDK and `darkroom generate`), one per run
of this package, with an HTTPS receiver for its callbacks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.callbacks.receiver import Receiver, https_receiver
from tests.e2e.procs import create_key, pause_after_first_step, service_env, serving


@dataclass
class Server:
    url: str
    env: dict[str, str]
    receiver: Receiver
    key: str


@contextmanager
def one_task_generating(server: Server) -> Iterator[str]:
    """A task held generating (after its first step) by the server's one worker, so the tasks
    queued meanwhile stay pending; released, and finished, on exit."""
    from darkroom.client import Client

    pause = pause_after_first_step(server.env)
    try:
        with Client(server.key, base_url=server.url) as client:
            held = client.images.generate("a task that holds the worker")
            deadline = time.monotonic() + 60
            while client.tasks.get(held.id).status != "processing":
                assert time.monotonic() < deadline, "the worker never took the task"
                time.sleep(0.05)
            yield held.id
            pause.unlink()
            client.tasks.wait(held.id, timeout=60)
    finally:
        pause.unlink(missing_ok=True)


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
            # Callers may cancel pending tasks here (the SDK's, the CLI's, the page's cancel).
            DARKROOM_MODELS='{"krea-2-turbo": {"cancellable": true}}',
        )
        key = create_key(env, "sdk")
        with serving("serve", env, tmp / "serve.log") as service:
            yield Server(service.base_url, env, receiver, key)
