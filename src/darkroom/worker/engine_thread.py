"""The one thread that loads, warms and runs a worker's engine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class EngineThread:
    """The one thread that loads, warms and runs an engine, for the life of the worker.

    torch keeps per-thread state: each thread that starts parallel CPU work gets its own OpenMP
    team (and oneDNN its own caches), and CUDA graphs captured by `torch.compile` belong to the
    thread that captured them. Handed to asyncio's shared executor, consecutive generations
    landed on whichever of its threads was free (the check and the PNG encoding use it too):
    measured with the tiny engine on this 2-core CPU, the same 1K image took ~1.26 s on average
    inside the service against 0.94 s alone, with torch's work spread over six threads; on one
    thread it took 0.95 s (`bench/service_overhead.py`, one task at a time: 1.42 -> 1.01).
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="darkroom-engine")

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=False)
