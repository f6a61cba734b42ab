"""Per-key request rates (the `limits` library) and caps on a key's unfinished tasks.

Embedded: counters in this process. With DARKROOM_REDIS_URL: counters in Redis, so every API
process behind a load balancer enforces one shared limit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from darkroom.errors import RateLimited


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


class RateLimiter:
    def __init__(self, storage: Storage, default_rate: str) -> None:
        self._storage = storage
        self._limiter = MovingWindowRateLimiter(storage)
        self._default = parse_rate(default_rate)

    @classmethod
    def from_url(
        cls, redis_url: str | None, default_rate: str, prefix: str = "darkroom"
    ) -> RateLimiter:
        if redis_url:
            storage: Storage = RedisStorage(
                redis_url.replace("redis://", "async+redis://", 1)
                if redis_url.startswith("redis://")
                else redis_url,
                implementation="redispy",
                key_prefix=prefix,
            )
        else:
            storage = MemoryStorage()
        return cls(storage, default_rate)

    async def hit(self, key_id: int, rate: str | None, scope: str) -> RateState:
        """Count one request for the key in `scope`; raise RateLimited (429) when over.

        Creates and polls are counted apart (with their own rates), so a client polling its
        tasks never uses up the requests it needs to create new ones.
        """
        item = parse_rate(rate) if rate else self._default
        identity = f"{key_id}:{scope}"
        allowed = await self._limiter.hit(item, identity)
        stats = await self._limiter.get_window_stats(item, identity)
        state = RateState(item.amount, stats.remaining, stats.reset_time)
        if not allowed:
            raise RateLimited(
                f"Rate limit exceeded: {item.amount} requests per "
                f"{item.multiples} {item.GRANULARITY.name}",
                retry_after=math.ceil(stats.reset_time - time.time()),
                extra_headers=state.headers(),
            )
        return state
