"""`darkroom generate "PROMPT"`: a picture from a darkroom server (or the hosted API), with a
live progress bar, saved to a file. Built on `darkroom.client`; needs no engine.

Exit codes, for scripts:

    0  the image is saved (or, with --no-wait, the task is queued)
    2  the request was refused as invalid (400), e.g. an unknown size, or no key was given
    3  the key was refused (401) or may not do this (403)
    4  not enough credits (402)
    5  rate limited (429); the message says how long to wait
    6  refused by the content policy (at submit, or the task failed for it)
    7  the task failed on the server (its code is in the message)
    8  the server could not be reached, or failed (5xx)
  130  interrupted (Ctrl-C): a task still pending is cancelled, and says so, where its model's
       tasks can be; one already generating goes on, and the message says how to fetch it
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from darkroom.client import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BadRequest,
    Client,
    ContentPolicyViolation,
    DarkroomError,
    InsufficientQuota,
    PermissionDenied,
    RateLimited,
    Task,
    TaskFailed,
    TaskNotCancellable,
)
from darkroom.contract import SIZES

err = Console(stderr=True)


def exit_code(error: DarkroomError) -> int:
    if isinstance(error, ContentPolicyViolation):
        return 6
    if isinstance(error, TaskFailed):
        return 6 if error.code == "content_policy_violation" else 7
    if isinstance(error, BadRequest):
        return 2
    if isinstance(error, AuthenticationError | PermissionDenied):
        return 3
    if isinstance(error, InsufficientQuota):
        return 4
    if isinstance(error, RateLimited):
        return 5
    return 8


def describe(error: DarkroomError) -> str:
    """One line a person can act on."""
    if isinstance(error, RateLimited):
        wait = f"; retry in {error.retry_after:.0f} s" if error.retry_after else ""
        return f"rate limited: {error.message}{wait}"
    if isinstance(error, InsufficientQuota):
        return f"not enough credits: {error.message}"
    if isinstance(error, ContentPolicyViolation):
        return f"refused by the content policy: {error.message}"
    if isinstance(error, AuthenticationError):
        return f"the key was refused: {error.message} (check DARKROOM_API_KEY or --key)"
    if isinstance(error, TaskFailed):
        return f"the task failed ({error.code}): {error.message}"
    if isinstance(error, APIConnectionError):
        return f"cannot reach the server: {error}"
    return str(error)


def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    size: Annotated[
        str | None, typer.Option(help=f"Aspect ratio: {', '.join(SIZES)}. Server default: 1:1.")
    ] = None,
    quality: Annotated[str | None, typer.Option(help="1K or 2K. Server default: 1K.")] = None,
    seed: Annotated[int | None, typer.Option(help="Same seed, same prompt: same image.")] = None,
    nsfw_check: Annotated[bool, typer.Option("--nsfw-check", help="Stricter moderation.")] = False,
    model: Annotated[str, typer.Option(help="The model.")] = "krea-2-turbo",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File or folder to save to. Default: <task id>.png."),
    ] = None,
    url: Annotated[
        str | None, typer.Option(envvar="DARKROOM_URL", help="Server. Default: 127.0.0.1:8000.")
    ] = None,
    key: Annotated[
        str | None, typer.Option(envvar="DARKROOM_API_KEY", help="API key.", show_default=False)
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the task (and the file) as JSON.")
    ] = False,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Queue it and print the task id; do not wait.")
    ] = False,
) -> None:
    """Generate an image: a live progress bar, then the saved file's path.

    Exit codes: 0 saved, 2 invalid request, 3 key refused, 4 no credits, 5 rate limited,
    6 content policy, 7 task failed, 8 server unreachable or failing.
    """
    if not key:
        err.print("error: no API key: set DARKROOM_API_KEY or pass --key", highlight=False)
        raise typer.Exit(2)
    try:
        with Client(api_key=key, base_url=url, max_retries=2, retry_rate_limited=False) as client:
            task = client.images.generate(
                prompt,
                model=model,
                size=size,
                quality=quality,
                seed=seed,
                nsfw_check=nsfw_check or None,
            )
            if no_wait:
                _print(as_json, task.raw, task.id)
                return
            if not as_json:
                err.print(f"queued {task.id} (Ctrl-C cancels it while it waits)", highlight=False)
            try:
                task = _wait_with_bar(client, task, quiet=as_json)
            except KeyboardInterrupt:
                _interrupted(client, task)
            path = client.tasks.download(task, output)
    except DarkroomError as error:
        _fail(error, as_json)
    _print(as_json, {"task": task.raw, "path": str(path.resolve())}, str(path))


def _wait_with_bar(client: Client, task: Task, *, quiet: bool) -> Task:
    columns = (
        TextColumn("{task.description:<10}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[estimate]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False, disable=quiet) as bar:
        line = bar.add_task(task.status, total=100, estimate=_estimate(task))

        def show(now: Task) -> None:
            bar.update(
                line, completed=now.progress, description=now.status, estimate=_estimate(now)
            )

        return client.tasks.wait(task.id, on_progress=show)


def _interrupted(client: Client, task: Task) -> None:
    """Ctrl-C while waiting: cancel the task if it is still pending (and may be), else say
    where it can be fetched; exit 130 either way."""
    try:
        cancelled = client.tasks.cancel(task.id)
    except TaskNotCancellable as refused:
        err.print(
            f"interrupted: task {task.id} goes on ({refused.message}); "
            f"fetch it later with GET /v1/tasks/{task.id}",
            highlight=False,
            soft_wrap=True,
        )
    except DarkroomError as error:
        err.print(f"interrupted: task {task.id} may go on ({describe(error)})", highlight=False)
    else:
        err.print(
            f"interrupted: task {cancelled.id} is cancelled and its credits are back",
            highlight=False,
        )
    raise typer.Exit(130)


def _estimate(task: Task) -> str:
    return f"~{task.estimated_time} s left" if task.estimated_time and not task.done else ""


def _print(as_json: bool, body: dict[str, Any], line: str) -> None:
    sys.stdout.write((json.dumps(body) if as_json else line) + "\n")


def _fail(error: DarkroomError, as_json: bool) -> None:
    message = describe(error)
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    if as_json:
        body: dict[str, Any] = {"message": message, "exit_code": exit_code(error)}
        if isinstance(error, APIStatusError):
            body |= {"status": error.status, "code": error.code, "param": error.param}
        if isinstance(error, TaskFailed):
            body |= {"code": error.code, "task": error.task}
        _print(True, {"error": body}, "")
    raise typer.Exit(exit_code(error))
