"""Failed authentications, counted per client address: guessing keys is not free.

Each made-up key costs the database a read (a key no process has seen is not in any cache).
Past the rate's failures within its window from one address, further requests from it are
answered 429 with Retry-After without a database read, unless their key is one this process
already knows to be live (so one bad client behind a shared address does not lock out the others
whose keys are in use). Counted in each API process's memory, in the moving windows the per-key
limits use (`LocalWindows`, which drops addresses idle for a whole window).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from darkroom.api.limits import LocalWindows, parse_rate
from darkroom.errors import RateLimited


class FailedAuths:
    def __init__(self, rate: str, clock: Callable[[], float] = time.time) -> None:
        self.item = parse_rate(rate)
        self.clock = clock
        self._windows = LocalWindows(clock)

    @property
    def limit(self) -> int:
        return int(self.item.amount)

    def blocked(self, address: str) -> bool:
        """Whether `address` has used up its failures within the window."""
        return self._windows.recent(self.item, address).remaining <= 0

    async def failed(self, address: str) -> None:
        await self._windows.hit(self.item, address)

    def refusal(self, address: str) -> RateLimited:
        state = self._windows.recent(self.item, address)
        return RateLimited(
            "Too many failed authentications from this address; retry later",
            retry_after=math.ceil(state.reset_at - self.clock()),
        )
