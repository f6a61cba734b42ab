"""A key's tasks, newest first, a page at a time (`GET /v1/tasks`).

Pages are cut by a keyset, not an offset: the cursor names the last task of a page (its created
time and id), and the next page is the tasks strictly older in (created_at, id) order, read on
the (api_key_id, created_at) index. Tasks created meanwhile never shift a page, and a deep page
costs what the first does.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, and_, or_, select

from darkroom.contract import Status, is_task_id
from darkroom.db.database import Database
from darkroom.db.schema import tasks
from darkroom.errors import InvalidRequest
from darkroom.tasks.model import Task


@dataclass(frozen=True, slots=True)
class Page:
    tasks: list[Task]
    next_cursor: str | None  # None: this was the last page


def encode_cursor(task: Task) -> str:
    raw = f"{task.created_at.isoformat()}|{task.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at, id) of the task a cursor names; InvalidRequest if it names none."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, task_id = raw.split("|")
        when = datetime.fromisoformat(created)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest("cursor is not one this server gave", param="cursor") from None
    if when.tzinfo is None or not is_task_id(task_id):
        raise InvalidRequest("cursor is not one this server gave", param="cursor")
    return when, task_id


class TaskHistory:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def page(
        self,
        api_key_id: int,
        *,
        limit: int,
        status: Status | None = None,
        cursor: str | None = None,
    ) -> Page:
        """Up to `limit` of the key's tasks (of `status`, if given), newest first, after the
        task `cursor` names."""
        query = select(tasks).where(tasks.c.api_key_id == api_key_id)
        if status is not None:
            query = query.where(tasks.c.status == status.value)
        if cursor is not None:
            created, task_id = decode_cursor(cursor)
            query = query.where(
                or_(
                    tasks.c.created_at < created,
                    and_(tasks.c.created_at == created, tasks.c.id < task_id),
                )
            )
        query = query.order_by(tasks.c.created_at.desc(), tasks.c.id.desc()).limit(limit + 1)

        def run(conn: Connection) -> list[Task]:
            return [Task.from_row(row) for row in conn.execute(query)]

        found = await self.db.read(run)
        more = len(found) > limit
        shown = found[:limit]
        return Page(shown, encode_cursor(shown[-1]) if more and shown else None)
