"""Failed authentications, counted per client address: guessing keys is not free.

Each made-up key costs the database a read (a key no process has seen is not in any cache).
Past `limit` failures within `period_s` from one address, further requests from it are answered
429 with Retry-After without a database read, unless their key is one this process already
knows to be live (so one bad client behind a shared address does not lock out the others whose
keys are in use). Counted in each API process's memory; at most `max_addresses` addresses are
remembered, the least recently failing going first, so a flood of addresses cannot grow it.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from darkroom.errors import RateLimited


class FailedAuths:
    def __init__(
        self,
        limit: int,
        period_s: float,
        *,
        max_addresses: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.period_s = period_s
        self.max_addresses = max_addresses
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        cutoff = self.clock() - self.period_s
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def blocked(self, address: str) -> bool:
        """Whether `address` has failed `limit` times within the period."""
        times = self._recent(address)
        return times is not None and len(times) >= self.limit

    def failed(self, address: str) -> None:
        times = self._recent(address) or deque()
        times.append(self.clock())
        self._failures[address] = times
        self._failures.move_to_end(address)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)

    def refusal(self, address: str) -> RateLimited:
        times = self._recent(address)
        wait = (times[0] + self.period_s - self.clock()) if times else 1.0
        return RateLimited(
            "Too many failed authentications from this address; retry later",
            retry_after=math.ceil(wait),
        )
