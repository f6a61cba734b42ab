"""Public fakes for tests of darkroom and of code built on it, with the real interfaces.

- `FakeClock`: a `darkroom.clock.Clock` that moves only when told, or when slept on.
- `TableResolver`: a callback `Resolver` answering from a table, offline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from datetime import datetime, timedelta

from darkroom.callbacks.addresses import IPAddress
from darkroom.clock import utcnow


class FakeClock:
    """Starts at the real now (so rows stamped by the real clock are comparable) and then moves
    only by `advance`, `set` or `sleep`; `sleep` returns at once, having moved the clock."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or utcnow()

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)

    def set(self, when: datetime) -> None:
        if when < self.current:
            raise ValueError("a clock does not go back")
        self.current = when

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)  # let others run, as a real sleep would


class TableResolver:
    """An offline resolver: each host answers from a table, optionally differently each call."""

    def __init__(self, table: dict[str, Sequence[Sequence[str]]]) -> None:
        """`table[host]` is the list of answers for the 1st, 2nd, ... lookup (the last repeats)."""
        self.table = table
        self.calls: list[str] = []

    async def resolve(self, host: str, port: int) -> Sequence[IPAddress]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answers = self.table[host]
        index = min(self.calls.count(host), len(answers)) - 1
        return [ipaddress.ip_address(a) for a in answers[index]]
