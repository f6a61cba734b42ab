"""Tracing end to end: one task is one trace, across the API process, its worker child and
the callback sender, exported over OTLP/HTTP to a collector on loopback."""

from __future__ import annotations

import itertools
from pathlib import Path

import httpx

from tests.callbacks.receiver import https_receiver
from tests.otlp_collector import ReceivedSpan, otlp_collector

from .procs import create_key, create_task, serving, wait_for
from .test_callbacks import callback_env

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def test_a_task_is_one_trace_from_create_to_callback(
    tmp_path: Path, database_url: str, tiny_model_dir: Path
) -> None:
    with otlp_collector() as collector, https_receiver(tmp_path, [200]) as receiver:
        env = callback_env(tmp_path, database_url, tiny_model_dir, receiver.ca_file) | {
            "DARKROOM_OTEL_ENDPOINT": collector.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # export every 100 ms, not every 5 s
        }
        key = create_key(env, "traced")
        with (
            serving("serve", env, tmp_path / "serve.log") as service,
            httpx.Client(base_url=service.base_url, timeout=30) as client,
        ):
            # The client's own trace: darkroom's spans continue it.
            client.headers["traceparent"] = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
            task_id = create_task(client, key, callback_url=receiver.url("127.0.0.1"))["id"]
            assert wait_for(client, key, task_id)[-1]["status"] == "completed"
            receiver.wait_for(1)

            def whole(spans: list[ReceivedSpan]) -> bool:
                names = {s.name for s in spans if s.trace_id == CLIENT_TRACE}
                return {"queued", "generating", "finishing", "callback"} <= names

            collector.wait_for(whole)

    trace = [s for s in collector.spans if s.trace_id == CLIENT_TRACE]
    [create] = [s for s in trace if s.name == "POST /v1/images/generations"]
    assert (create.service, create.parent_id) == ("darkroom-api", CLIENT_SPAN)
    assert create.attributes["http.response.status_code"] == 200
    by_name = {s.name: s for s in trace if s.name != create.name and not s.name.startswith("GET")}
    assert sorted(by_name) == ["callback", "finishing", "generating", "queued"]
    for name, span in by_name.items():
        assert span.parent_id == create.span_id, name
        assert span.attributes["darkroom.task_id"] == task_id
    assert {by_name[n].service for n in ("queued", "generating", "finishing")} == {
        "darkroom-worker"
    }
    assert by_name["callback"].service == "darkroom-api"
    assert by_name["callback"].attributes["darkroom.callback.delivered"] is True
    # The phases follow one another: the wait ends where generating starts, and so on.
    order = [by_name[n] for n in ("queued", "generating", "finishing", "callback")]
    assert all(a.end_ns <= b.start_ns + 1_000_000 for a, b in itertools.pairwise(order))
    assert create.start_ns <= order[0].start_ns + 1_000_000  # within a millisecond's rounding
    # The polls were traced too, each its own span in the client's trace.
    assert any(s.name == "GET /v1/tasks/{task_id}" for s in trace)
