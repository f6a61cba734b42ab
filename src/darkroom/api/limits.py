"""Per-key request rates: moving windows, counted in this process or shared through Redis.

Embedded: each key's recent request times in this process's memory (`LocalWindows`). With
DARKROOM_REDIS_URL: the `limits` library's moving windows in Redis, so every API process behind
a load balancer enforces one shared limit. Both count the same way: a request is allowed when
fewer than `amount` were allowed in the `period` before it.

Redis going away does not take the API with it (`FallbackWindows`): requests are counted in this
process's windows instead (each process then allows up to the whole limit, so N processes up to
N times it), logged once when it starts and once when Redis answers again, and counted in the
`darkroom_rate_limit_fallbacks_total` metric. Availability beats an exact shared limit for the
minutes an outage lasts; a 500 for every request would not be a limit but an outage.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import structlog
from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from darkroom.errors import RateLimited

log = structlog.get_logger("darkroom.api.limits")


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

    def recent(self, item: RateLimitItem, identity: str) -> RateState:
        """The window as it stands, without counting a request."""
        now, period = self.clock(), float(item.get_expiry())
        window = self._windows.get(identity)
        times = window[1] if window is not None and window[0] == period else deque()
        while times and times[0] <= now - period:
            times.popleft()
        reset_at = (times[0] if times else now) + period
        return RateState(item.amount, item.amount - len(times), reset_at)

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


class FallbackWindows:
    """The shared windows while Redis answers; this process's own while it does not.

    Each call to Redis has `timeout_s`; after a failure, Redis is tried again only after
    `retry_s`, so an outage costs one slow request per interval, not one per request.
    """

    def __init__(
        self,
        shared: Windows,
        local: Windows | None = None,
        *,
        timeout_s: float = 0.5,
        retry_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shared = shared
        self.local = local or LocalWindows()
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.clock = clock
        self._down_since: float | None = None
        self._retry_at = 0.0
        self.fallbacks = 0  # requests counted here because Redis did not answer

    @property
    def degraded(self) -> bool:
        """Whether limits are being counted in this process only."""
        return self._down_since is not None

    async def hit(self, item: RateLimitItem, identity: str) -> tuple[bool, RateState]:
        if self._down_since is None or self.clock() >= self._retry_at:
            try:
                result = await asyncio.wait_for(self.shared.hit(item, identity), self.timeout_s)
            except Exception as exc:  # connection refused, reset, timed out, a Redis error
                self._failed(exc)
            else:
                if self._down_since is not None:
                    log.warning(
                        "Redis answers again: rate limits are shared again",
                        seconds_apart=round(self.clock() - self._down_since, 1),
                    )
                    self._down_since = None
                return result
        self.fallbacks += 1
        return await self.local.hit(item, identity)

    def _failed(self, exc: BaseException) -> None:
        now = self.clock()
        self._retry_at = now + self.retry_s
        if self._down_since is None:
            self._down_since = now
            log.warning(
                "Redis does not answer: rate limits are counted in this process until it does",
                error=f"{type(exc).__name__}: {exc}"[:300],
            )


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
        if redis_url:
            return cls(FallbackWindows(SharedWindows(redis_url, prefix)), default_rate)
        return cls(LocalWindows(), default_rate)

    @property
    def degraded(self) -> bool:
        """Shared limits configured, but counted in this process for now (Redis is away)."""
        return isinstance(self._windows, FallbackWindows) and self._windows.degraded

    @property
    def fallbacks(self) -> int:
        """Requests this process counted itself because Redis did not answer."""
        return self._windows.fallbacks if isinstance(self._windows, FallbackWindows) else 0

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
