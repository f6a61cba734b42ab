"""Riding out a result store (or a remote engine) that fails: no attempt spent, no claim while
it is down.

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
from collections.abc import Callable
from typing import Any

from darkroom.storage.base import ResultStorage


class StorageFailed(Exception):
    """Writing a result failed in the result store (not in the database)."""


class ProbeGate:
    """Closed while something the worker needs is down; opened by a probe that goes through
    (at most one a back-off interval: 1 s doubling to 30 s). `what` names it in the log."""

    FIRST_S, MOST_S = 1.0, 30.0

    def __init__(self, what: str, probe: Callable[[], None], logger: Any) -> None:
        self.what = what
        self._probe = probe
        self.log = logger
        self.down_since: float | None = None
        self._delay = self.FIRST_S
        self._next_probe = 0.0
        self._first_open = False  # closed from the start: its first opening is no recovery

    @property
    def is_open(self) -> bool:
        return self.down_since is None

    def failed(self, exc: BaseException) -> None:
        """It failed: close until a probe goes through."""
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            self._delay = self.FIRST_S
            self.log.error(
                f"{self.what} is down: claiming stops until it is back",
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
        self._next_probe = now + self._delay

    async def open(self) -> bool:
        """Whether tasks may be claimed: it did not fail, or a probe goes through now."""
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
            self.log.warning(f"{self.what} is still down", error=str(exc)[:200])
            return False
        if self._first_open:
            self.log.info(f"{self.what} answers: claiming starts")
        else:
            self.log.warning(
                f"{self.what} is back: claiming resumes",
                seconds_down=round(now - self.down_since, 1),
            )
        self.down_since = None
        self._first_open = False
        return True


class StorageGate(ProbeGate):
    """The result store: its probe writes and deletes a small file."""

    def __init__(self, storage: ResultStorage, logger: Any) -> None:
        super().__init__("the result store", self._write_probe, logger)
        self.storage = storage

    def _write_probe(self) -> None:
        key = f"probe/{secrets.token_hex(6)}"
        self.storage.put(key, b"darkroom storage probe")
        self.storage.delete(key)


class EngineGate(ProbeGate):
    """A remote engine: its probe is the engine's own (its models listed, one real generation).
    Closed from the start, so the worker is ready only once the engine has answered."""

    def __init__(self, probe: Callable[[], None], logger: Any) -> None:
        super().__init__("the engine", probe, logger)
        self.down_since = time.monotonic()
        self._first_open = True
