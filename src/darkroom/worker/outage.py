"""Riding out a database that fails: back off, keep the model, give up only after a long outage.

A worker's model takes minutes to load with real weights; a reset connection, a failover or a
lock timeout must not cost that. `Outage.attempt` runs one step of the worker's loop and, on a
transient database error, logs it, waits (0.5 s doubling to 30 s, or until stopped) and lets the
loop carry on; only failures that last `limit_s` without a success in between raise
DatabaseOutage.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    NotSupportedError,
    ProgrammingError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

T = TypeVar("T")


class DatabaseOutage(RuntimeError):
    """The database stayed unreachable longer than the worker waits for it."""


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is what an unreachable, restarting or failing-over database raises (worth
    waiting out), rather than a bug's error (a constraint, bad SQL), which stops the worker.
    Drivers disagree on the class of a refused connection: asyncpg's reach SQLAlchemy as plain
    DBAPIError, so the rule names what is not transient."""
    if isinstance(exc, IntegrityError | ProgrammingError | DataError | NotSupportedError):
        return False
    return isinstance(exc, DBAPIError | PoolTimeout | OSError | TimeoutError)


class Outage:
    """Backs off while the database fails (0.5 s doubling to 30 s) and gives up once it has
    failed for `limit_s` without a success in between."""

    FIRST_S, MOST_S = 0.5, 30.0

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.since: float | None = None
        self.delay = self.FIRST_S

    async def attempt(
        self, step: Callable[[], Awaitable[T]], stop: asyncio.Event, logger: Any
    ) -> T | None:
        """`step()`'s result, or None after a transient database error and its back-off."""
        try:
            result = await step()
        except Exception as exc:
            if not is_transient(exc):
                raise
            now = time.monotonic()
            self.since = self.since if self.since is not None else now
            failing_s = now - self.since
            if failing_s >= self.limit_s:
                raise DatabaseOutage(
                    f"the database has been unreachable for {failing_s:.0f} s "
                    f"(DARKROOM_WORKER_DATABASE_OUTAGE_S={self.limit_s:g}); last error: {exc}"
                ) from exc
            logger.warning(
                "database unavailable; retrying",
                error=f"{type(exc).__name__}: {exc}"[:500],
                retry_in_s=self.delay,
                failing_for_s=round(failing_s, 1),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.delay)
            self.delay = min(self.MOST_S, self.delay * 2)
            return None
        if self.since is not None:
            logger.info("database reachable again", after_s=round(time.monotonic() - self.since, 1))
        self.since, self.delay = None, self.FIRST_S
        return result
