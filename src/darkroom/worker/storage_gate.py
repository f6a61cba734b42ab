"""Riding out a result store that fails: no attempt spent, no claim while it is down.

A storage outage (a full disk, S3 refusing or hanging) is not the task's fault nor a lost
worker's: each claimed task whose result could not be stored goes back to the queue at once
with its attempt given back (`TaskStore.release`), instead of sitting in `processing` until its
lease runs out and coming back with an attempt spent (three of them, and every queued task ended
failed with "the worker stopped responding"). The worker then stops claiming and reports not
ready until a probe write goes through (every 1 s doubling to 30 s), so it does not generate
the whole queue into a store that takes nothing.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from darkroom.storage.base import ResultStorage


class StorageFailed(Exception):
    """Writing a result failed in the result store (not in the database)."""


class StorageGate:
    FIRST_S, MOST_S = 1.0, 30.0

    def __init__(self, storage: ResultStorage, logger: Any) -> None:
        self.storage = storage
        self.log = logger
        self.down_since: float | None = None
        self._delay = self.FIRST_S
        self._next_probe = 0.0

    @property
    def is_open(self) -> bool:
        return self.down_since is None

    def failed(self, exc: BaseException) -> None:
        """The store refused a write: close until a probe goes through."""
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            self._delay = self.FIRST_S
            self.log.error(
                "the result store refuses writes: claiming stops until it takes one",
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
        self._next_probe = now + self._delay

    async def open(self) -> bool:
        """Whether tasks may be claimed: the store took the last write, or takes a probe now
        (at most one probe per back-off interval)."""
        if self.down_since is None:
            return True
        now = time.monotonic()
        if now < self._next_probe:
            return False
        try:
            await asyncio.to_thread(self._probe)
        except Exception as exc:
            self._delay = min(self.MOST_S, self._delay * 2)
            self._next_probe = time.monotonic() + self._delay
            self.log.warning("the result store still refuses writes", error=str(exc)[:200])
            return False
        self.log.warning(
            "the result store takes writes again: claiming resumes",
            seconds_down=round(now - self.down_since, 1),
        )
        self.down_since = None
        return True

    def _probe(self) -> None:
        key = f"probe/{secrets.token_hex(6)}"
        self.storage.put(key, b"darkroom storage probe")
        self.storage.delete(key)
