"""Per-key request rates: moving windows, counted in this process or shared through Redis.

Embedded: each key's recent request times in this process's memory (`LocalWindows`). With
DARKROOM_REDIS_URL: the `limits` library's moving windows in Redis, so every API process behind
a load balancer enforces one shared limit. Both count the same way: a request is allowed when
fewer than `amount` were allowed in the `period` before it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from darkroom.errors import RateLimited


@lru_cache(maxsize=256)
def parse_rate(text: str) -> RateLimitItem:
    """`60/minute`, `10 per second`, ...: the `limits` notation; ValueError if it is not one."""
    try:
        return parse(text)
    except ValueError as exc:
        raise ValueError(f"not a rate limit: {text!r} (try '60/minute')") from exc


@dataclass(frozen=True, slots=True)
class RateState:
    limit: int
    remaining: int
    reset_at: float

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }


class Windows(Protocol):
    async def hit(self, item: RateLimitItem, identity: str) -> tuple[bool, RateState]:
        """Count a request of `identity` if `item` allows it: (allowed, the window after)."""


class LocalWindows:
    """Moving windows in this process: each identity's allowed request times, oldest first.

    A request costs a few list operations, whatever the rate: no lock (the event loop runs one
    request at a time here) and no background sweep. An identity idle for its whole window is
    dropped at the next sweep (every `sweep_every` requests), so memory follows active keys.
    """

    def __init__(self, clock: Callable[[], float] = time.time, sweep_every: int = 10_000) -> None:
        self.clock = clock
        self.sweep_every = sweep_every
        self._windows: dict[str, tuple[float, deque[float]]] = {}
        self._until_sweep = sweep_every

    async def hit(self, item: RateLimitItem, identity: str) -> tuple[bool, RateState]:
        now, period = self.clock(), float(item.get_expiry())
        window = self._windows.get(identity)
        if window is None or window[0] != period:
            window = self._windows[identity] = (period, deque())
        times = window[1]
        while times and times[0] <= now - period:
            times.popleft()
        allowed = len(times) < item.amount
        if allowed:
            times.append(now)
        self._until_sweep -= 1
        if self._until_sweep <= 0:
            self._sweep(now)
        reset_at = (times[0] if times else now) + period
        return allowed, RateState(item.amount, item.amount - len(times), reset_at)

    def _sweep(self, now: float) -> None:
        self._until_sweep = self.sweep_every
        idle = [k for k, (period, t) in self._windows.items() if not t or t[-1] <= now - period]
        for identity in idle:
            del self._windows[identity]


class SharedWindows:
    """Moving windows in Redis (the `limits` library), shared by every API process."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        url = redis_url
        if url.startswith("redis://"):
            url = url.replace("redis://", "async+redis://", 1)
        storage = RedisStorage(url, implementation="redispy", key_prefix=prefix)
        self._limiter = MovingWindowRateLimiter(storage)

    async def hit(self, item: RateLimitItem, identity: str) -> tuple[bool, RateState]:
        allowed = await self._limiter.hit(item, identity)
        stats = await self._limiter.get_window_stats(item, identity)
        return allowed, RateState(item.amount, stats.remaining, stats.reset_time)


class RateLimiter:
    def __init__(
        self, windows: Windows, default_rate: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._windows = windows
        self._default = parse_rate(default_rate)
        self.clock = clock

    @classmethod
    def from_url(
        cls, redis_url: str | None, default_rate: str, prefix: str = "darkroom"
    ) -> RateLimiter:
        windows: Windows = SharedWindows(redis_url, prefix) if redis_url else LocalWindows()
        return cls(windows, default_rate)

    async def hit(self, key_id: int, rate: str | None, scope: str) -> RateState:
        """Count one request for the key in `scope`; raise RateLimited (429) when over.

        Creates and polls are counted apart (with their own rates), so a client polling its
        tasks never uses up the requests it needs to create new ones.
        """
        item = parse_rate(rate) if rate else self._default
        allowed, state = await self._windows.hit(item, f"{key_id}:{scope}")
        if not allowed:
            raise RateLimited(
                f"Rate limit exceeded: {item.amount} requests per "
                f"{item.multiples} {item.GRANULARITY.name}",
                retry_after=math.ceil(state.reset_at - self.clock()),
                extra_headers=state.headers(),
            )
        return state
