"""Time, as darkroom reads it: aware UTC now, and waiting, behind one small interface.

The stores stamp rows with the `Clock` they are given, and the use cases and duties compare
times on it (the API's builder hands one clock to all of them); a component that waits on time
(the callback sender's retry schedule, the maintenance interval) sleeps on it. Tests give them
`darkroom.testing.FakeClock`: a lease runs out, a retry falls due, a model goes unserved,
without sleeping through it.
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
