"""`GET /v1/tasks/{id}/events` over real HTTP: a task streamed from pending to completed, and
the stream resumed with Last-Event-ID after the API process serving it was killed."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from darkroom.client.sse import Event, EventParser, events

from .procs import (
    create_key,
    create_task,
    free_port,
    pause_after_first_step,
    running,
    service_env,
    serving,
)

RANK = {"pending": 0, "processing": 1, "completed": 2}


def read_until(lines: Iterator[str], parser: EventParser, stop: Any) -> tuple[list[Event], bool]:
    """Events until `stop(event)` is true (True) or the stream ends (False)."""
    seen = []
    for event in events(lines, parser):
        seen.append(event)
        if stop(event):
            return seen, True
    return seen, False


@pytest.fixture
def env(tmp_path: Path, tiny_model_dir: Path) -> dict[str, str]:
    """SQLite only: the stream reads the task as a poll does, on either database."""
    return service_env(tmp_path / "data", f"sqlite+aiosqlite:///{tmp_path}/t.db", tiny_model_dir)


def test_stream_survives_its_api_process_dying(env: dict[str, str], tmp_path: Path) -> None:
    env = env | {"DARKROOM_EVENTS_INTERVAL_S": "0.05"}
    key = create_key(env, "events")
    # The task waits after its first step until the second API process answers: still running.
    pause = pause_after_first_step(env)
    auth = {"Authorization": f"Bearer {key}"}
    port = free_port()
    with (
        serving("api", env, tmp_path / "api-1.log", port=port) as api,
        httpx.Client(base_url=api.base_url, timeout=30) as client,
    ):
        task_id = create_task(client, key, size="1:1", quality="1K")["id"]
        poll = client.get(f"/v1/tasks/{task_id}", headers=auth).json()
        parser = EventParser()
        with (
            running(["worker"], env, tmp_path / "worker.log"),
            client.stream("GET", f"/v1/tasks/{task_id}/events", headers=auth) as stream,
        ):
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            before, stopped = read_until(
                stream.iter_lines(),
                parser,
                lambda e: e.event == "processing" and json.loads(e.data)["progress"] > 0,
            )
            assert stopped, before
            # The first event is the task as a poll showed it when the stream opened.
            first = json.loads(before[0].data)
            assert before[0].event == "pending" and first["id"] == task_id
            assert first.keys() == poll.keys()
            api.process.send_signal(signal.SIGKILL)
            api.process.wait()
            with serving("api", env, tmp_path / "api-2.log", port=port) as again:
                pause.unlink()
                resumed_at = parser.last_id
                headers = {**auth, "Last-Event-ID": resumed_at or ""}
                with httpx.stream(
                    "GET",
                    f"{again.base_url}/v1/tasks/{task_id}/events",
                    headers=headers,
                    timeout=60,
                ) as stream:
                    lines = stream.iter_lines()
                    after, ended = read_until(
                        lines, parser, lambda e: e.event in ("completed", "failed")
                    )
                    assert ended, after
                    # The server closes the stream after its last event.
                    assert list(lines) == []
                final = json.loads(after[-1].data)
                assert after[-1].event == "completed", final
                assert after[0].id != resumed_at  # nothing the client already had
                polled = httpx.get(f"{again.base_url}/v1/tasks/{task_id}", headers=auth).json()
                assert final == polled
                # A reconnect after the end is told there is nothing more.
                done = httpx.get(
                    f"{again.base_url}/v1/tasks/{task_id}/events",
                    headers={**auth, "Last-Event-ID": after[-1].id or ""},
                )
                assert done.status_code == 204

    bodies = [json.loads(e.data) for e in before + after]
    statuses = [b["status"] for b in bodies]
    assert [RANK[s] for s in statuses] == sorted(RANK[s] for s in statuses), statuses
    progress = [b["progress"] for b in bodies]
    assert progress == sorted(progress) and progress[-1] == 100, progress
    assert any(0 < p < 100 for p in progress), progress  # seen mid-way, before the kill
    ids = [e.id for e in before + after]
    assert len(ids) == len(set(ids)), ids  # every event is news


def test_stream_refuses_like_a_poll(env: dict[str, str], tmp_path: Path) -> None:
    key = create_key(env, "mine")
    other = create_key(env, "theirs")
    with (
        serving("api", env, tmp_path / "api.log") as api,
        httpx.Client(base_url=api.base_url, timeout=30) as client,
    ):
        task_id = create_task(client, key)["id"]
        url = f"/v1/tasks/{task_id}/events"
        assert client.get(url).status_code == 401
        theirs = client.get(url, headers={"Authorization": f"Bearer {other}"})
        assert theirs.status_code == 403 and theirs.json()["error"]["code"] == "permission_denied"
        missing = client.get(
            "/v1/tasks/task-unified-1-aaaaaaaa/events", headers={"Authorization": f"Bearer {key}"}
        )
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "task_not_found"
        started = time.monotonic()
        with client.stream("GET", url, headers={"Authorization": f"Bearer {key}"}) as stream:
            parser = EventParser()
            first = next(events(stream.iter_lines(), parser))
        assert first.event == "pending" and time.monotonic() - started < 30


def test_streams_are_bounded_per_key_per_process_and_in_time(
    env: dict[str, str], tmp_path: Path
) -> None:
    """One key cannot hold the process's sockets: past its share a stream is refused with 429
    and Retry-After, past the process's cap too, a closed stream frees its place, and a stream
    on a task that never ends (no worker here) is ended by the server after its lifetime."""
    env = env | {
        "DARKROOM_EVENTS_MAX_STREAMS_PER_KEY": "3",
        "DARKROOM_EVENTS_MAX_STREAMS": "5",
        "DARKROOM_EVENTS_MAX_LIFETIME_S": "2",
        "DARKROOM_EVENTS_INTERVAL_S": "0.05",
    }
    greedy, other = create_key(env, "greedy"), create_key(env, "other")
    with (
        serving("api", env, tmp_path / "api.log") as api,
        httpx.Client(base_url=api.base_url, timeout=30) as client,
        contextlib.ExitStack() as streams,
    ):

        def open_stream(key: str) -> httpx.Response:
            task_id = create_task(client, key)["id"]
            auth = {"Authorization": f"Bearer {key}"}
            return streams.enter_context(
                client.stream("GET", f"/v1/tasks/{task_id}/events", headers=auth)
            )

        held = [open_stream(greedy) for _ in range(3)]
        assert [r.status_code for r in held] == [200] * 3
        refused = open_stream(greedy)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert json.loads(refused.read())["error"]["code"] == "rate_limit_exceeded"
        assert [open_stream(other).status_code for _ in range(3)] == [200, 200, 429]  # 5 in all
        held[0].close()  # the client goes away: its place is given back
        deadline = time.monotonic() + 10
        while (again := open_stream(greedy)).status_code == 429:
            assert time.monotonic() < deadline, "the closed stream's place was not given back"
            time.sleep(0.1)
        # Lived its time: the server ends it although the task is still pending.
        lines = list(again.iter_lines())
        assert any(line.startswith("event: pending") for line in lines), lines
