"""The embedded rate limiter's moving windows, on a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from darkroom.api.limits import FallbackWindows, LocalWindows, RateLimiter, RateState, parse_rate
from darkroom.errors import RateLimited


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_window_allows_its_amount_then_refuses_until_the_oldest_leaves() -> None:
    clock = Clock()
    windows, item = LocalWindows(clock), parse_rate("3/minute")
    seen = []
    for _ in range(3):
        seen.append(await windows.hit(item, "k"))
        clock.now += 10
    assert [(ok, s.remaining) for ok, s in seen] == [(True, 2), (True, 1), (True, 0)]
    assert seen[-1][1].reset_at == 1060.0  # the first request leaves the window then
    allowed, state = await windows.hit(item, "k")  # at 1030
    assert (allowed, state.remaining, state.reset_at) == (False, 0, 1060.0)
    clock.now = 1060.0  # the first one is out: exactly one minute after it
    allowed, state = await windows.hit(item, "k")
    assert (allowed, state.remaining, state.reset_at) == (True, 0, 1070.0)
    assert (await windows.hit(item, "other"))[0]  # identities are counted apart


async def test_refused_requests_do_not_count() -> None:
    clock = Clock()
    windows, item = LocalWindows(clock), parse_rate("1/second")
    assert (await windows.hit(item, "k"))[0]
    for _ in range(5):
        clock.now += 0.1
        assert not (await windows.hit(item, "k"))[0]
    clock.now = 1001.0
    assert (await windows.hit(item, "k"))[0]


async def test_idle_identities_are_dropped_and_a_new_rate_starts_a_new_window() -> None:
    clock = Clock()
    windows = LocalWindows(clock, sweep_every=3)
    await windows.hit(parse_rate("2/second"), "idle")
    clock.now += 5
    await windows.hit(parse_rate("2/second"), "busy")
    await windows.hit(parse_rate("2/minute"), "busy")  # the key's rate changed: a fresh window
    assert set(windows._windows) == {"busy"}
    assert len(windows._windows["busy"][1]) == 1


async def test_the_limiter_raises_429_with_retry_after() -> None:
    clock = Clock()
    limiter = RateLimiter(LocalWindows(clock), "2/minute", clock)
    await limiter.hit(1, None, "create")
    clock.now += 15
    await limiter.hit(1, None, "create")
    await limiter.hit(1, None, "query")  # another scope, its own window
    with pytest.raises(RateLimited) as refused:
        await limiter.hit(1, None, "create")
    headers = refused.value.headers()
    assert (headers["X-RateLimit-Remaining"], headers["Retry-After"]) == ("0", "45")
    assert await limiter.hit(1, "5/minute", "create")  # a key's own rate


class _Away:
    """Shared windows whose Redis does not answer (until `back` is set)."""

    def __init__(self) -> None:
        self.back = False
        self.calls = 0

    async def hit(self, item: Any, identity: str) -> tuple[bool, RateState]:
        self.calls += 1
        if not self.back:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")
        return True, RateState(item.amount, item.amount - 1, 0.0)


async def test_redis_away_counts_limits_in_this_process_then_shares_them_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis down: no request fails for it, the limit still holds per process, Redis is asked
    again only once per retry interval, and its return is noticed."""
    now = [0.0]
    shared = _Away()
    windows = FallbackWindows(shared, LocalWindows(lambda: now[0]), retry_s=5, clock=lambda: now[0])
    limiter = RateLimiter(windows, "3/minute", lambda: now[0])
    for _ in range(3):
        await limiter.hit(1, None, "poll")
    with pytest.raises(RateLimited):
        await limiter.hit(1, None, "poll")
    assert limiter.degraded and limiter.fallbacks == 4
    assert shared.calls == 1  # not one connection attempt per request
    now[0] = 6.0
    shared.back = True
    await limiter.hit(2, None, "poll")
    assert not limiter.degraded and shared.calls == 2 and limiter.fallbacks == 4
