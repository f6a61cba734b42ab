"""The served OpenAPI document states the wire: schemathesis against a real `darkroom api`.

Every operation is called with generated requests (valid and invalid) and a real key; every
answer must be documented (status, content type, body, headers) and none a 5xx.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from .procs import cli, create_key, create_task, serving


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[tuple[str, str]]:
    """A lone `darkroom api` on SQLite (no worker: tasks stay pending) and a funded key."""
    from .procs import service_env

    tmp = tmp_path_factory.mktemp("openapi")
    env = service_env(
        tmp / "data",
        f"sqlite+aiosqlite:///{tmp}/api.db",
        tiny_model_dir,
        DARKROOM_DEFAULT_RATE_LIMIT="100000/minute",
        # No worker: the OpenAI route's every accepted request meets this wait (a 504).
        DARKROOM_OPENAI_WAIT_S="0.2",
    )
    cli(env, "migrate")
    cli(env, "accounts", "create", "schema", "--credits", "1000")
    key = create_key(env, "schema")
    with serving("api", env, tmp / "api.log") as service:
        yield service.base_url, key


@pytest.fixture(scope="module")
def api_schema(api: tuple[str, str]) -> Any:
    base_url, _key = api
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json")


# A schema-valid create can still be refused with a documented 400: the content policy, the
# prompt's token count, lone surrogates or NUL in a string, a callback host that does not
# resolve. JSON Schema cannot state those; every other check runs.
NOT_EXPRESSIBLE = [schemathesis.checks.positive_data_acceptance]

OPERATIONS = [
    ("/v1/images/generations", "POST"),
    ("/v1/tasks/{task_id}", "GET"),
    ("/v1/tasks/{task_id}/events", "GET"),
    ("/v1/credits", "GET"),
    ("/v1/files/{key}", "GET"),
    ("/v1/tasks", "GET"),
    ("/v1/tasks/{task_id}/cancel", "POST"),
    ("/openai/v1/images/generations", "POST"),
    ("/openai/v1/models", "GET"),
    ("/openai/v1/models/{model_id}", "GET"),
]


def test_the_document_lists_these_operations(api_schema: Any) -> None:
    served = {(op.ok().path, op.ok().method.upper()) for op in api_schema.get_all_operations()}
    assert served == set(OPERATIONS)


WAITS = {"/openai/v1/images/generations"}


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_every_answer_is_documented(
    path: str, method: str, api: tuple[str, str], api_schema: Any
) -> None:
    """Valid and invalid requests alike: no 5xx, no undocumented status, body or header."""
    base_url, key = api
    auth = {"Authorization": f"Bearer {key}"}
    operation = api_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: Any) -> None:
        if path not in WAITS:
            case.call_and_validate(base_url=base_url, headers=auth, excluded_checks=NOT_EXPRESSIBLE)
            return
        # A route that waits for its images answers a documented 504 past its wait (and no
        # worker runs here); any other 5xx is still a failure.
        excluded = [*NOT_EXPRESSIBLE, schemathesis.checks.not_a_server_error]
        response = case.call(base_url=base_url, headers=auth)
        case.validate_response(response, excluded_checks=excluded)
        assert response.status_code < 500 or response.status_code == 504, response.text

    check()


def test_a_real_task_and_its_poll_match_the_document(api: tuple[str, str], api_schema: Any) -> None:
    """Generated task ids are never real ones: poll one that is, through the document."""
    base_url, key = api
    with httpx.Client(base_url=base_url, timeout=30) as client:
        task = create_task(client, key, size="16:9", seed=7)
    operation = api_schema["/v1/tasks/{task_id}"]["GET"]
    case = operation.Case(path_parameters={"task_id": task["id"]})
    response = case.call_and_validate(base_url=base_url, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    assert response.json()["task_info"]["estimated_time"] >= 0


def test_the_document_states_the_contract(api: tuple[str, str]) -> None:
    base_url, _key = api
    document = httpx.get(f"{base_url}/openapi.json").json()
    assert "422" not in str(document) and "HTTPValidationError" not in str(document)
    create = document["paths"]["/v1/images/generations"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["model", "prompt"]
    assert body["properties"]["model"]["enum"] == ["krea-2-turbo"]
    assert "2:1" in body["properties"]["size"]["anyOf"][0]["enum"]
    assert body["properties"]["seed"]["anyOf"][0]["maximum"] == 1_048_576
    assert {"400", "401", "402", "403", "413", "429", "500"} <= set(create["responses"])
    assert create["security"] == [{"bearerAuth": []}]
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: `dk-…`",
    }
    files = document["paths"]["/v1/files/{key}"]["get"]
    assert "image/png" in files["responses"]["200"]["content"]
    assert "security" not in files
