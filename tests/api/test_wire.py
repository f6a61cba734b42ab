"""One declaration of the wire: the create's body the document shows is the model the route
validates with, and the two agree on what they accept; a rendered task is the document's
`TaskBody`. No server: the models, the parser and the renderer themselves."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest

from darkroom.api.openapi import generation_request_body
from darkroom.api.schemas import parse_generation_request
from darkroom.contract import FailureCode, Quality, Status
from darkroom.errors import InvalidRequest
from darkroom.settings import Settings
from darkroom.tasks.model import Task
from darkroom.tasks.render import render_task
from darkroom.wire import TaskBody, TaskInfo

from ..helpers import new_task

ACCEPTED = [
    {"model": "krea-2-turbo", "prompt": "a fox"},
    {"model": "krea-2-turbo", "prompt": "a fox", "size": None, "quality": None, "seed": None},
    {"model": "krea-2-turbo", "prompt": "a fox", "size": "2:1", "quality": "2K", "seed": 0},
    {"model": "krea-2-turbo", "prompt": "a fox", "seed": 1_048_576, "nsfw_check": True},
    {"model": "krea-2-turbo", "prompt": "a fox", "some_future_field": [1, 2]},
]
REFUSED = [
    {"prompt": "a fox"},
    {"model": "krea-2-turbo"},
    {"model": "krea-2-turbo", "prompt": "   "},
    {"model": "krea-2-turbo", "prompt": 7},
    {"model": "krea-2-turbo", "prompt": "a fox", "size": "7:3"},
    {"model": "krea-2-turbo", "prompt": "a fox", "quality": "4K"},
    {"model": "krea-2-turbo", "prompt": "a fox", "seed": 1_048_577},
    {"model": "krea-2-turbo", "prompt": "a fox", "seed": -1},
    {"model": "krea-2-turbo", "prompt": "a fox", "seed": "7"},
    {"model": "krea-2-turbo", "prompt": "a fox", "nsfw_check": "yes"},
]


@pytest.fixture(scope="module")
def documented() -> dict[str, Any]:
    body = generation_request_body(Settings(_env_file=None))  # type: ignore[call-arg]
    schema: dict[str, Any] = body["content"]["application/json"]["schema"]
    return schema


@pytest.mark.parametrize("payload", ACCEPTED)
def test_what_the_document_accepts_the_route_accepts(
    documented: dict[str, Any], payload: dict[str, Any]
) -> None:
    jsonschema.validate(payload, documented)
    order = parse_generation_request(payload)
    assert order.size == (payload.get("size") or "1:1")
    assert order.quality is Quality(payload.get("quality") or "1K")


@pytest.mark.parametrize("payload", REFUSED)
def test_what_the_document_refuses_the_route_refuses(
    documented: dict[str, Any], payload: dict[str, Any]
) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(payload, documented)
    with pytest.raises(InvalidRequest):
        parse_generation_request(payload)


def _task(status: Status, **changes: Any) -> Task:
    return replace(Task.queued(new_task((1, 1))), status=status, **changes)


@pytest.mark.parametrize(
    ("task", "shown", "absent"),
    [
        (_task(Status.PENDING), {"task_info"}, {"results", "error", "duration"}),
        (
            _task(
                Status.COMPLETED,
                progress=100,
                charged_micro=450_000,
                started_at=datetime(2026, 12, 7, 12, 0, tzinfo=UTC),
                finished_at=datetime(2026, 12, 7, 12, 0, tzinfo=UTC) + timedelta(seconds=3.2),
            ),
            {"results", "result_data", "duration"},
            {"error"},
        ),
        (
            _task(Status.FAILED, error_code=FailureCode.SERVICE_ERROR, error_message="lost"),
            {"error"},
            {"results", "duration"},
        ),
    ],
)
def test_a_rendered_task_is_the_documented_body(
    task: Task, shown: set[str], absent: set[str]
) -> None:
    body = render_task(task, user_group="default", results=["https://x/a.png"], estimated_time=5)
    assert TaskBody.model_validate(body).model_dump(mode="json", exclude_none=True) == body
    assert shown <= body.keys() and not absent & body.keys()
    assert None not in body.values()


def test_the_sdk_reads_and_sends_only_what_the_document_declares(
    documented: dict[str, Any],
) -> None:
    """darkroom.client keeps its own small types (it installs without the server): every key
    it reads from a task and every field it sends on a create is the document's."""
    import ast
    import inspect
    import textwrap

    from darkroom.client import _base

    source = ast.parse(textwrap.dedent(inspect.getsource(_base.Task.from_body)))
    read = {
        node.args[0].value
        for node in ast.walk(source)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and isinstance(node.args[0], ast.Constant)
    } | {
        node.slice.value
        for node in ast.walk(source)
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
    }
    declared = set(TaskBody.model_fields) | set(TaskInfo.model_fields)
    assert read and read <= declared, read - declared

    sent = _base.generation_body(
        "a fox", model="krea-2-turbo", size="2:1", quality="2K", seed=7, nsfw_check=True,
        callback_url="https://example.com/hook",
    )  # fmt: skip
    assert set(sent) == set(documented["properties"])
    jsonschema.validate(sent, documented)

    rendered = render_task(
        _task(Status.PENDING), user_group="default", results=[], estimated_time=5,
        queue_position=2, can_cancel=True,
    )  # fmt: skip
    task = _base.Task.from_body(rendered)
    assert (task.status, task.queue_position, task.can_cancel, task.estimated_time) == (
        "pending", 2, True, 5,
    )  # fmt: skip


def test_the_playground_reads_and_sends_only_what_the_document_declares(
    documented: dict[str, Any],
) -> None:
    """The playground's script: every field it reads of a task (`task.x`, its `task_info` as
    `info.x`) and every field of the create body it sends is the document's."""
    import re
    from importlib.resources import files

    script = (files("darkroom.api") / "playground" / "app.js").read_text()
    read = set(re.findall(r"\btask\.(\w+)", script))
    read_info = set(re.findall(r"\b(?:info|task_info)\.(\w+)", script))
    assert {"status", "id", "results", "task_info"} <= read
    assert read <= set(TaskBody.model_fields), read - set(TaskBody.model_fields)
    assert {"estimated_time", "queue_position"} <= read_info
    assert read_info <= set(TaskInfo.model_fields), read_info - set(TaskInfo.model_fields)
    [body] = re.findall(r"const body = \{([^}]*)\}", script)
    sent = {part.split(":")[0].strip() for part in body.split(",")}
    assert {"model", "prompt"} <= sent <= set(documented["properties"]), sent
