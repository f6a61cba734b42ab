"""`darkroom generate` as a user runs it: a subprocess against a real server."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
from pathlib import Path

from PIL import Image

from tests.client.conftest import Server, one_task_generating
from tests.conftest import darkroom_cmd
from tests.e2e.procs import cli, free_port


def generate(
    server: Server, *args: str, key: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = server.env | {"DARKROOM_URL": server.url, "DARKROOM_API_KEY": key or server.key}
    return subprocess.run(
        [*darkroom_cmd(), "generate", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def test_saves_the_picture_and_prints_its_path(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "boat.png"
    done = generate(server, "a paper boat on a pond", "--size", "3:2", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    with Image.open(io.BytesIO(out.read_bytes())) as image:
        assert image.format == "PNG" and image.size == (1280, 832)
    assert "completed" in done.stderr and "100%" in done.stderr  # the bar, on stderr


def test_json_and_no_wait_for_scripts(server: Server, tmp_path: Path) -> None:
    done = generate(server, "a lantern", "--quality", "1K", "--seed", "9", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["task"]["status"] == "completed" and body["task"]["seed"] == 9
    assert Path(body["path"]) == tmp_path / f"{body['task']['id']}.png"
    assert Path(body["path"]).stat().st_size > 0
    queued = generate(server, "a lantern", "--no-wait")
    assert queued.returncode == 0, queued.stderr
    assert re.fullmatch(r"task-unified-\d+-[a-z0-9]{8}\n", queued.stdout)


def test_errors_are_one_line_with_their_exit_code(server: Server) -> None:
    broke = cli(
        server.env, "keys", "create", "--account", "cli-broke", "--create-account",
        "--credit-limit", "0",
    ).stdout.splitlines()[-1]  # fmt: skip
    limited = cli(
        server.env, "keys", "create", "--account", "sdk", "--rate-limit", "1/minute"
    ).stdout.splitlines()[-1]
    assert generate(server, "a kite", "--no-wait", key=limited).returncode == 0
    cases = [
        (generate(server, "a kite", "--size", "7:5"), 2, "size"),
        (generate(server, "a kite", key="sk-not-a-real-key-000000000000"), 3, "key was refused"),
        (generate(server, "a kite", key=broke), 4, "not enough credits"),
        (generate(server, "a kite", key=limited), 5, "retry in"),
        (generate(server, "pedophilia"), 6, "content policy"),
    ]
    for done, code, words in cases:
        assert done.returncode == code, (code, done.stderr)
        assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr
    unreachable = server.env | {"DARKROOM_URL": f"http://127.0.0.1:{free_port()}"}
    gone = subprocess.run(
        [*darkroom_cmd(), "generate", "a kite", "--json"],
        env=unreachable | {"DARKROOM_API_KEY": server.key},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gone.returncode == 8 and "cannot reach the server" in gone.stderr
    keyless = {k: v for k, v in server.env.items() if k != "DARKROOM_API_KEY"}
    no_key = subprocess.run(
        [*darkroom_cmd(), "generate", "a kite"],
        env=keyless | {"DARKROOM_URL": server.url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert no_key.returncode == 2 and "DARKROOM_API_KEY" in no_key.stderr
    assert json.loads(gone.stdout)["error"]["exit_code"] == 8


def test_ctrl_c_cancels_a_pending_task_and_says_so(server: Server) -> None:
    from darkroom.client import Client

    env = server.env | {"DARKROOM_URL": server.url, "DARKROOM_API_KEY": server.key}
    with one_task_generating(server) as generating, Client(server.key, base_url=server.url) as c:
        proc = subprocess.Popen(
            [*darkroom_cmd(), "generate", "a picture nobody waits for"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stderr is not None
            queued = proc.stderr.readline()  # it says so once the create has answered
            assert queued.startswith("queued task-unified-"), queued
            newest = c.tasks.get(queued.split()[1])
            assert newest.id != generating and newest.status == "pending"
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 130, stderr
        assert f"task {newest.id} is cancelled" in stderr
        ended = c.tasks.get(newest.id)
        assert ended.status == "failed" and ended.error is not None
        assert ended.error["code"] == "request_cancelled"
