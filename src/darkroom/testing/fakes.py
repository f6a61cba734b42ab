"""Stand-ins for the clock, DNS and the engine, with the real interfaces."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import TYPE_CHECKING

from darkroom.callbacks.addresses import IPAddress
from darkroom.clock import utcnow
from darkroom.engine.base import Batch, StepCallback

if TYPE_CHECKING:
    from darkroom.engine.base import Pixels


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


class FakeEngine:
    """Generates at once, without a model: each image is one flat colour drawn from its seed,
    at the batch's size, after reporting `steps` steps. `fail_with` is raised instead of
    generating (an engine error, an out-of-memory); `before_generate` runs first on the engine's
    thread (to act while a batch is in hand). Records each batch and the thread it ran on."""

    def __init__(
        self,
        models: Sequence[str] = ("krea-2-turbo",),
        *,
        steps: int = 8,
        fail_with: BaseException | None = None,
        before_generate: Callable[[Batch], None] | None = None,
        device_type: str = "cpu",
    ) -> None:
        self.models = tuple(models)
        self.steps = steps
        self.fail_with = fail_with
        self.before_generate = before_generate
        self.device = SimpleNamespace(type=device_type)
        self.batches: list[Batch] = []
        self.threads: list[int] = []

    def count_tokens(self, prompt: str) -> int:
        """Whitespace-separated words: a stand-in for a tokenizer."""
        return len(prompt.split())

    def generate(self, batch: Batch, on_step: StepCallback) -> list[Pixels]:
        self.batches.append(batch)
        self.threads.append(threading.get_ident())
        if self.before_generate is not None:
            self.before_generate(batch)
        if self.fail_with is not None:
            raise self.fail_with
        for step in range(1, self.steps + 1):
            on_step(step, self.steps)
        import numpy as np  # the engine extra's; the fakes for the API need none of it

        shape = (batch.height, batch.width, 3)
        return [np.full(shape, _colour(job.seed), dtype=np.uint8) for job in batch.jobs]


def _colour(seed: int) -> tuple[int, int, int]:
    return (seed * 73 % 256, seed * 151 % 256, seed * 199 % 256)
