"""Who may hold the callback sender's pool: a share per account, a share per receiving host,
and a slow lane for hosts that keep timing out.

One process's pool is `callback_concurrency` deliveries. Without shares, the callbacks due
first take it, so one account whose receivers hang holds every slot for the 10 s each attempt
may last and everyone else's callbacks wait behind it. With them:

- an account holds at most `share` of the pool (the claim asks the database for no more);
- a receiving host holds at most `share` too, whichever accounts point at it (a claimed
  callback over its host's share is given back unattempted, due again shortly);
- a host whose last `SLOW_AFTER` attempts all timed out is slow: slow hosts together hold at
  most half a share, until one of their attempts answers or `SLOW_FOR_S` pass.

The bookkeeping is per process and in memory, as the pool is.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

# Attempts in a row that timed out before a host counts as slow, and how long it stays so
# without a new timeout.
SLOW_AFTER = 3
SLOW_FOR_S = 600.0
# Hosts remembered at most (the oldest forgotten first), so made-up hosts cannot grow memory.
MAX_HOSTS = 10_000

K = TypeVar("K")


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _decrement(counter: Counter[K], key: K) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


@dataclass
class _Health:
    timeouts: int = 0  # attempts in a row that timed out
    last_timeout: float = 0.0  # monotonic seconds


@dataclass
class Lanes:
    concurrency: int
    share: float
    by_account: Counter[int] = field(default_factory=Counter)
    by_host: Counter[str] = field(default_factory=Counter)
    slow_in_flight: int = 0
    _health: dict[str, _Health] = field(default_factory=dict)

    @property
    def per_party(self) -> int:
        """Deliveries one account, or one host, may have in flight."""
        return max(1, math.floor(self.concurrency * self.share))

    @property
    def slow_lane(self) -> int:
        """Deliveries all slow hosts together may have in flight."""
        return max(1, self.per_party // 2)

    def is_slow(self, host: str, now: float) -> bool:
        health = self._health.get(host)
        return (
            health is not None
            and health.timeouts >= SLOW_AFTER
            and now - health.last_timeout < SLOW_FOR_S
        )

    def admits(self, host: str, now: float) -> bool:
        """Whether a delivery to `host` may start now."""
        if self.by_host[host] >= self.per_party:
            return False
        return not self.is_slow(host, now) or self.slow_in_flight < self.slow_lane

    def start(self, account_id: int, host: str, now: float) -> bool:
        """Count a delivery in; returns whether it runs in the slow lane."""
        slow = self.is_slow(host, now)
        self.by_account[account_id] += 1
        self.by_host[host] += 1
        self.slow_in_flight += slow
        return slow

    def end(self, account_id: int, host: str, *, slow: bool, timed_out: bool, now: float) -> None:
        """Count a delivery out, and remember whether its host answered in time."""
        _decrement(self.by_account, account_id)
        _decrement(self.by_host, host)
        self.slow_in_flight -= slow
        if not timed_out:
            self._health.pop(host, None)
            return
        health = self._health.pop(host, None) or _Health()
        health.timeouts += 1
        health.last_timeout = now
        self._health[host] = health  # re-inserted: the dict's order is least recent first
        while len(self._health) > MAX_HOSTS:
            del self._health[next(iter(self._health))]
