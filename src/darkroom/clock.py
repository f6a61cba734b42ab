"""Time, as darkroom reads it: aware UTC now, and waiting, behind one small interface.

Stores stamp rows with `utcnow()`. A component that waits on time (the callback sender's retry
schedule) takes a `Clock` in its constructor, so tests can give it `darkroom.testing.FakeClock`
and check a 1/2/4 s schedule without sleeping through it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Protocol


def utcnow() -> datetime:
    """Now, as an aware UTC datetime (the only kind darkroom stores)."""
    return datetime.now(UTC)


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, aware UTC."""

    async def sleep(self, seconds: float) -> None:
        """Return once `seconds` have passed on this clock."""


class SystemClock:
    """The real one."""

    def now(self) -> datetime:
        return utcnow()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
