"""Where a task's result file lives, one key per attempt, and removing what attempts left.

Every attempt writes under its own key (`{task_id}/{attempt}.png`), and the transaction that
completes the task records the winner's key. An attempt fenced out (its lease was taken over, or
the task was cancelled) can therefore only ever touch its own file, never the one the winning
attempt published. What losing attempts leave behind is removed when the task ends, and the
expiry sweep removes every attempt's key again, for files a crash left between publishing and
the refused completion.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import structlog

from darkroom.storage.base import ResultStorage

log = structlog.get_logger("darkroom.results")


def result_key(task_id: str, attempt: int) -> str:
    """The key attempt `attempt` (1, 2, ...) of a task writes its image under."""
    return f"{task_id}/{attempt}.png"


def attempt_keys(task_id: str, attempts: int, *, keep: Iterable[str] = ()) -> list[str]:
    """Every key attempts up to `attempts` may have written, but those in `keep`.

    Attempt 0 stands for the single `{task_id}/0.png` that every attempt of older versions wrote.
    """
    kept = set(keep)
    keys = (result_key(task_id, attempt) for attempt in range(attempts + 1))
    return [key for key in keys if key not in kept]


def delete_keys(storage: ResultStorage, keys: Iterable[str]) -> None:
    """Delete each key (a missing one is no error); blocking, so run it in a thread."""
    for key in keys:
        storage.delete(key)


async def remove_leftovers(
    storage: ResultStorage, task_id: str, attempts: int, *, keep: Iterable[str] = ()
) -> bool:
    """Delete the files a task's attempts may have left, but `keep`; False (logged) when the
    storage failed: the expiry sweep tries again."""
    try:
        await asyncio.to_thread(delete_keys, storage, attempt_keys(task_id, attempts, keep=keep))
    except Exception:
        log.exception("could not remove a task's leftover result files", task_id=task_id)
        return False
    return True
