"""The callback pool's shares: per account, per host, and the slow lane (bookkeeping only; the
sender's tests run them against real receivers)."""

from __future__ import annotations

from darkroom.callbacks.lanes import MAX_HOSTS, SLOW_AFTER, SLOW_FOR_S, Lanes, host_of


def time_out(lanes: Lanes, host: str, times: int, now: float = 0.0) -> None:
    for _ in range(times):
        slow = lanes.start(1, host, now)
        lanes.end(1, host, slow=slow, timed_out=True, now=now)


def test_a_host_holds_at_most_its_share() -> None:
    lanes = Lanes(concurrency=32, share=0.25)
    assert lanes.per_party == 8 and lanes.slow_lane == 4
    for account in range(8):
        assert lanes.admits("a.example", 0)
        lanes.start(account, "a.example", 0)
    assert not lanes.admits("a.example", 0)
    assert lanes.admits("b.example", 0)
    lanes.end(3, "a.example", slow=False, timed_out=False, now=0)
    assert lanes.admits("a.example", 0)
    assert lanes.by_account[3] == 0 and 3 not in lanes.by_account


def test_a_small_pool_still_gives_everyone_one_slot() -> None:
    lanes = Lanes(concurrency=2, share=0.25)
    assert lanes.per_party == 1 and lanes.slow_lane == 1


def test_hosts_that_keep_timing_out_share_the_slow_lane() -> None:
    lanes = Lanes(concurrency=32, share=0.25)
    time_out(lanes, "hang.example", SLOW_AFTER - 1)
    assert not lanes.is_slow("hang.example", 1)
    time_out(lanes, "hang.example", 1)
    time_out(lanes, "hang2.example", SLOW_AFTER)
    assert lanes.is_slow("hang.example", 1) and lanes.is_slow("hang2.example", 1)
    started = 0
    for host in ["hang.example", "hang2.example"] * 4:
        if lanes.admits(host, 1):
            assert lanes.start(9, host, 1) is True
            started += 1
    assert started == lanes.slow_lane == 4  # the two slow hosts together, not 8 each
    assert lanes.admits("fine.example", 1)
    assert lanes.start(9, "fine.example", 1) is False


def test_a_slow_host_recovers_by_answering_or_by_time() -> None:
    lanes = Lanes(concurrency=32, share=0.25)
    time_out(lanes, "a.example", SLOW_AFTER)
    time_out(lanes, "b.example", SLOW_AFTER)
    slow = lanes.start(1, "a.example", 1)
    lanes.end(1, "a.example", slow=slow, timed_out=False, now=2)
    assert not lanes.is_slow("a.example", 2)
    assert lanes.is_slow("b.example", SLOW_FOR_S - 1)
    assert not lanes.is_slow("b.example", SLOW_FOR_S + 1)
    assert lanes.slow_in_flight == 0


def test_remembered_hosts_are_bounded() -> None:
    lanes = Lanes(concurrency=4, share=0.25)
    for n in range(MAX_HOSTS + 5):
        time_out(lanes, f"h{n}.example", 1)
    time_out(lanes, "h9.example", SLOW_AFTER - 1)  # recent again: kept
    time_out(lanes, "last.example", 1)
    assert lanes.is_slow("h9.example", 0)
    assert len(lanes._health) == MAX_HOSTS and "h0.example" not in lanes._health
    assert not lanes.by_host and not lanes.by_account


def test_host_of_ignores_case_port_and_credentials() -> None:
    assert host_of("https://user:pw@Hooks.Example.com:8443/x?y") == "hooks.example.com"
    assert host_of("https://[2001:db8::1]:443/") == "2001:db8::1"
