"""A caller cancelling its own task (`POST /v1/tasks/{id}/cancel`, a darkroom extension).

Only a pending task of a model whose registry entry says `cancellable` can be cancelled: it ends
`failed` with `request_cancelled`, its credits released and its callback queued, in the one
transaction the store's cancel is. A task already generating is left to finish (its picture is
being made; the answer is 409), as is one of a model whose tasks cannot be cancelled (the hosted
contract says so of krea-2-turbo: `task_info.can_cancel` is false). Cancelling a task this
caller already cancelled answers it again, so a retried cancel is harmless.
"""

from __future__ import annotations

from darkroom.contract import FailureCode, Status
from darkroom.errors import TaskNotCancellable
from darkroom.settings import Settings
from darkroom.tasks.model import Task
from darkroom.tasks.store import TaskStore

CANCELLED_MESSAGE = "Cancelled by its caller"


def can_cancel(task: Task, settings: Settings) -> bool:
    """What `task_info.can_cancel` says: pending, and of a model whose tasks may be cancelled."""
    config = settings.models.get(task.model)
    return task.status is Status.PENDING and config is not None and config.cancellable


async def cancel_task(task: Task, tasks: TaskStore, settings: Settings) -> Task:
    """The task as cancelled, or TaskNotCancellable saying why not."""
    if _cancelled(task):
        return task
    config = settings.models.get(task.model)
    if config is None or not config.cancellable:
        raise TaskNotCancellable(f"Tasks of {task.model} cannot be cancelled on this server")
    if task.status is Status.PENDING:
        ended = await tasks.cancel(task.id, CANCELLED_MESSAGE, pending_only=True)
        if ended is not None:
            return ended
        task = await tasks.get(task.id) or task  # a worker took it meanwhile, or it ended
        if _cancelled(task):
            return task
    if task.status is Status.PROCESSING:
        raise TaskNotCancellable("This task is already generating; it will finish")
    raise TaskNotCancellable(f"This task has already ended ({task.status.value})")


def _cancelled(task: Task) -> bool:
    return task.status is Status.FAILED and task.error_code is FailureCode.REQUEST_CANCELLED
