"""Token buckets on a fake clock; the async wrapper on an event loop whose time is virtual.

No test reads the real clock or sleeps: accuracy is asserted on simulated time, so it is exact
and repeatable. (Real sockets and real time are bench/ratelimit_sockets.py's job.)
"""

from __future__ import annotations

import asyncio
import heapq
import math
import selectors
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerwire.ratelimit import DEFAULT_BURST_S, AsyncRateLimiter, TokenBucket

KIB = 1024
MIB = 1024 * KIB
RATES_BPS = [1 * MIB, 20 * MIB, 100 * MIB]
TOLERANCE = 0.02  # the figure


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


Send = tuple[float, int]  # (time the bytes were written, how many)


def run_senders(
    clock: FakeClock, senders: list[tuple[TokenBucket, int]], duration_s: float
) -> list[list[Send]]:
    """Greedy senders, each a loop of reserve / wait / write, on the fake clock.

    Each sender reserves its chunk as soon as its previous write is done, the way a coroutine
    calling ``AsyncRateLimiter.acquire`` in a loop does. Returns each sender's writes in
    ``[0, duration_s)``.
    """
    ready: list[tuple[float, int]] = [(0.0, index) for index in range(len(senders))]
    writes: list[list[Send]] = [[] for _ in senders]
    while ready:
        ready_s, index = heapq.heappop(ready)
        if ready_s >= duration_s:
            continue
        clock.now_s = ready_s
        bucket, chunk_bytes = senders[index]
        write_s = ready_s + bucket.reserve(chunk_bytes)
        if write_s < duration_s:
            writes[index].append((write_s, chunk_bytes))
        heapq.heappush(ready, (write_s, index))
    return writes


def bytes_before(writes: list[Send], end_s: float) -> int:
    return sum(size for when_s, size in writes if when_s < end_s)


# -- one bucket, long-run accuracy -------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate_bps", "chunk_bytes"),
    [
        (1 * MIB, 16 * KIB),
        (20 * MIB, 16 * KIB),
        (20 * MIB, 256 * KIB),
        (100 * MIB, 16 * KIB),
        (100 * MIB, 256 * KIB),
        (100 * MIB, 1 * MIB),
    ],
)
def test_bucket_holds_rate_within_2_percent_every_second_from_the_first_byte(
    rate_bps: int, chunk_bytes: int
) -> None:
    clock = FakeClock()
    [writes] = run_senders(clock, [(TokenBucket(rate_bps, clock=clock), chunk_bytes)], 10.0)
    assert writes[0][0] == 0.0  # the first byte goes out at once
    for second in range(1, 11):
        sent = bytes_before(writes, float(second))
        assert abs(sent / (rate_bps * second) - 1) <= TOLERANCE, (second, sent)


@pytest.mark.parametrize("rate_bps", RATES_BPS)
@pytest.mark.parametrize("chunk_bytes", [16 * KIB, 64 * KIB, 100_000, 256 * KIB, 1 * MIB])
def test_bucket_holds_rate_within_2_percent_over_10_seconds(
    rate_bps: int, chunk_bytes: int
) -> None:
    clock = FakeClock()
    [writes] = run_senders(clock, [(TokenBucket(rate_bps, clock=clock), chunk_bytes)], 10.0)
    assert abs(bytes_before(writes, 10.0) / (rate_bps * 10) - 1) <= TOLERANCE


@settings(max_examples=40, deadline=None)
@given(
    rate_bps=st.integers(min_value=1 * MIB, max_value=100 * MIB),
    chunks=st.lists(st.integers(min_value=16 * KIB, max_value=1 * MIB), min_size=1, max_size=8),
)
def test_bucket_is_never_behind_the_rate_nor_ahead_by_more_than_one_write(
    rate_bps: int, chunks: list[int]
) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_bps, clock=clock)
    sent = 0
    for index in range(int(rate_bps * 10 / min(chunks)) + 1):
        chunk_bytes = chunks[index % len(chunks)]
        clock.now_s += bucket.reserve(chunk_bytes)
        if clock.now_s >= 10.0:
            break
        # Before this write, the bytes of [0, now) were at least rate * now, at most one write
        # more (a little float slack on both sides).
        assert sent >= rate_bps * clock.now_s - 1e-6 * rate_bps
        assert sent <= rate_bps * clock.now_s + max(chunks) + 1e-6 * rate_bps
        sent += chunk_bytes
    assert abs(sent / (rate_bps * 10) - 1) <= max(chunks) / (rate_bps * 10) + 1e-6


def test_block_larger_than_burst_goes_out_at_once_and_delays_the_next() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1 * MIB, burst_bytes=64 * KIB, clock=clock)
    waits = []
    for _ in range(5):
        wait_s = bucket.reserve(1 * MIB)
        waits.append(wait_s)
        clock.now_s += wait_s
    assert waits == [0.0, 1.0, 1.0, 1.0, 1.0]


# -- burst -------------------------------------------------------------------------------------


def test_fresh_bucket_starts_empty_so_the_first_second_gets_no_extra() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1 * MIB, burst_bytes=1 * MIB, clock=clock)
    assert bucket.available_bytes() == 0
    assert bucket.reserve(16 * KIB) == 0.0
    assert bucket.reserve(16 * KIB) == pytest.approx(16 * KIB / MIB)


def test_burst_after_idle_lets_burst_plus_one_write_through_then_paces() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1 * MIB, burst_bytes=64 * KIB, clock=clock)
    clock.now_s += bucket.reserve(1 * MIB)
    clock.now_s += 10.0  # idle: pays the debt, then fills to the burst
    assert bucket.available_bytes() == 64 * KIB
    assert [bucket.reserve(16 * KIB) for _ in range(5)] == [0.0] * 5
    assert bucket.reserve(16 * KIB) == pytest.approx(16 * KIB / MIB)


def test_idle_credit_never_exceeds_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(20 * MIB, burst_bytes=256 * KIB, clock=clock)
    clock.now_s = 3600.0
    assert bucket.available_bytes() == 256 * KIB
    assert bucket.reserve(256 * KIB) == 0.0
    assert bucket.reserve(1) == 0.0
    assert bucket.reserve(1) > 0.0


def test_default_burst_is_50_ms_of_the_rate_and_follows_set_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(20 * MIB, clock=clock)
    assert bucket.burst_bytes == math.ceil(20 * MIB * DEFAULT_BURST_S)
    bucket.set_rate(100 * MIB)
    assert bucket.burst_bytes == math.ceil(100 * MIB * DEFAULT_BURST_S)
    bucket.set_rate(1 * MIB, burst_bytes=4096)
    assert bucket.burst_bytes == 4096


def test_zero_burst_paces_strictly_even_after_idle() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1 * MIB, burst_bytes=0, clock=clock)
    clock.now_s = 100.0
    assert bucket.reserve(16 * KIB) == 0.0
    assert bucket.reserve(16 * KIB) == pytest.approx(16 * KIB / MIB)


# -- nesting -----------------------------------------------------------------------------------


def test_child_is_limited_by_a_slower_parent() -> None:
    clock = FakeClock()
    host = TokenBucket(20 * MIB, clock=clock)
    task = TokenBucket(100 * MIB, clock=clock, parent=host)
    [writes] = run_senders(clock, [(task, 64 * KIB)], 10.0)
    assert abs(bytes_before(writes, 10.0) / (20 * MIB * 10) - 1) <= TOLERANCE


def test_child_keeps_its_own_lower_limit_under_a_faster_parent() -> None:
    clock = FakeClock()
    host = TokenBucket(100 * MIB, clock=clock)
    task = TokenBucket(5 * MIB, clock=clock, parent=host)
    [writes] = run_senders(clock, [(task, 64 * KIB)], 10.0)
    assert abs(bytes_before(writes, 10.0) / (5 * MIB * 10) - 1) <= TOLERANCE


def test_two_children_share_their_parent_evenly() -> None:
    clock = FakeClock()
    host = TokenBucket(20 * MIB, clock=clock)
    first = TokenBucket(100 * MIB, clock=clock, parent=host)
    second = TokenBucket(None, clock=clock, parent=host)
    writes = run_senders(clock, [(first, 64 * KIB), (second, 64 * KIB)], 10.0)
    totals = [bytes_before(w, 10.0) for w in writes]
    assert abs(sum(totals) / (20 * MIB * 10) - 1) <= TOLERANCE
    for total in totals:
        assert abs(total / (10 * MIB * 10) - 1) <= TOLERANCE


def test_capped_child_gets_its_cap_and_its_sibling_the_rest_of_the_parent() -> None:
    clock = FakeClock()
    host = TokenBucket(20 * MIB, clock=clock)
    capped = TokenBucket(5 * MIB, clock=clock, parent=host)
    free = TokenBucket(None, clock=clock, parent=host)
    capped_writes, free_writes = run_senders(clock, [(capped, 64 * KIB), (free, 64 * KIB)], 10.0)
    capped_bytes = bytes_before(capped_writes, 10.0)
    free_bytes = bytes_before(free_writes, 10.0)
    assert capped_bytes <= 5 * MIB * 10 * (1 + TOLERANCE)
    assert capped_bytes >= 5 * MIB * 10 * 0.9  # waits behind the sibling's queue now and then
    assert abs((capped_bytes + free_bytes) / (20 * MIB * 10) - 1) <= TOLERANCE


def test_upload_and_download_trees_do_not_share_tokens() -> None:
    clock = FakeClock()
    host_up = TokenBucket(1 * MIB, clock=clock)
    host_down = TokenBucket(1 * MIB, clock=clock)
    task_up = TokenBucket(None, clock=clock, parent=host_up)
    task_down = TokenBucket(None, clock=clock, parent=host_down)
    task_up.reserve(10 * MIB)
    assert task_up.delay_s() == pytest.approx(10.0)
    assert task_down.delay_s() == 0.0
    assert task_down.reserve(16 * KIB) == 0.0


def test_delay_is_the_longest_debt_of_the_chain() -> None:
    clock = FakeClock()
    host = TokenBucket(1 * MIB, clock=clock)
    task = TokenBucket(2 * MIB, clock=clock, parent=host)
    other = TokenBucket(None, clock=clock, parent=host)
    other.reserve(3 * MIB)  # only the host is in debt
    assert task.delay_s() == pytest.approx(3.0)
    assert task.reserve(2 * MIB) == pytest.approx(3.0)
    clock.now_s = 3.0  # host debt 2 MiB left, task debt paid (1.5 s at 2 MiB/s)
    assert task.delay_s() == pytest.approx(2.0)
    assert task.available_bytes() > 0


# -- unlimited, set_rate, refunds, validation --------------------------------------------------


def test_unlimited_bucket_never_waits_and_reports_infinite_tokens() -> None:
    clock = FakeClock()
    bucket = TokenBucket(None, clock=clock)
    assert all(bucket.reserve(100 * MIB) == 0.0 for _ in range(100))
    assert bucket.available_bytes() == math.inf
    assert bucket.delay_s() == 0.0


def test_unlimited_means_no_rate_anywhere_in_the_chain_now() -> None:
    clock = FakeClock()
    host = TokenBucket(None, clock=clock)
    task = TokenBucket(None, clock=clock, parent=host)
    assert task.unlimited and host.unlimited
    host.set_rate(1 * MIB)
    assert not task.unlimited and not host.unlimited
    host.set_rate(None)
    task.set_rate(2 * MIB)
    assert not task.unlimited and host.unlimited


def test_set_rate_applies_from_now_and_keeps_debt_in_bytes() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1 * MIB, clock=clock)
    bucket.reserve(2 * MIB)
    clock.now_s = 1.0  # 1 MiB of debt left
    bucket.set_rate(4 * MIB)
    assert bucket.delay_s() == pytest.approx(0.25)
    [writes] = run_senders(clock, [(bucket, 64 * KIB)], 11.0)
    # From t=1 the 1 MiB debt takes 0.25 s, then 4 MiB/s for the remaining 9.75 s.
    assert abs(bytes_before(writes, 11.0) / (4 * MIB * 9.75) - 1) <= TOLERANCE


def test_set_rate_to_unlimited_and_back_starts_empty() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1 * MIB, clock=clock)
    bucket.reserve(5 * MIB)
    bucket.set_rate(None)
    assert bucket.reserve(16 * KIB) == 0.0
    clock.now_s = 100.0
    bucket.set_rate(1 * MIB)
    assert bucket.available_bytes() == 0
    assert bucket.reserve(1 * MIB) == 0.0
    assert bucket.reserve(1) == pytest.approx(1.0)


def test_refund_returns_tokens_to_the_whole_chain() -> None:
    clock = FakeClock()
    host = TokenBucket(1 * MIB, clock=clock)
    task = TokenBucket(1 * MIB, clock=clock, parent=host)
    task.reserve(1 * MIB)
    task.reserve(1 * MIB)
    task.refund(1 * MIB)
    assert task.available_bytes() == -1 * MIB
    assert host.available_bytes() == -1 * MIB


def test_clock_stepping_back_adds_no_tokens() -> None:
    clock = FakeClock()
    clock.now_s = 10.0
    bucket = TokenBucket(1 * MIB, clock=clock)
    bucket.reserve(1 * MIB)
    clock.now_s = 5.0
    assert bucket.available_bytes() == -1 * MIB
    clock.now_s = 10.5
    assert bucket.available_bytes() == pytest.approx(-0.5 * MIB)


@pytest.mark.parametrize("rate_bps", [0.0, -1.0, math.nan, math.inf])
def test_impossible_rates_are_refused(rate_bps: float) -> None:
    with pytest.raises(ValueError, match="rate_bps"):
        TokenBucket(rate_bps, clock=FakeClock())
    with pytest.raises(ValueError, match="rate_bps"):
        TokenBucket(None, clock=FakeClock()).set_rate(rate_bps)


def test_negative_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="burst_bytes"):
        TokenBucket(1 * MIB, burst_bytes=-1, clock=FakeClock())
    bucket = TokenBucket(1 * MIB, clock=FakeClock())
    with pytest.raises(ValueError, match="size_bytes"):
        bucket.reserve(-1)
    with pytest.raises(ValueError, match="size_bytes"):
        bucket.refund(-1)


# -- the async wrapper, on virtual time --------------------------------------------------------


class _VirtualTimeSelector(selectors.DefaultSelector):
    """Never blocks: when nothing is ready, time jumps forward to the next timer instead."""

    def __init__(self, advance: Callable[[float], None]) -> None:
        super().__init__()
        self._advance = advance

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if ready:
            return ready
        if timeout is None:
            raise RuntimeError("the test would block forever: nothing is scheduled")
        self._advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock only moves when every task waits on a timer."""

    def __init__(self) -> None:
        self._now_s = 0.0
        super().__init__(_VirtualTimeSelector(self._advance))

    def time(self) -> float:
        return self._now_s

    def _advance(self, seconds: float) -> None:
        self._now_s += seconds


def run_virtual(main: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        runner.run(main)


def test_acquire_sleeps_the_reserved_wait() -> None:
    clock = FakeClock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now_s += seconds

    limiter = AsyncRateLimiter(TokenBucket(1 * MIB, clock=clock), sleep=sleep)

    async def main() -> None:
        for _ in range(4):
            await limiter.acquire(1 * MIB)
        await limiter.acquire(0)  # waits out the last block's debt

    asyncio.run(main())
    assert slept == [1.0, 1.0, 1.0, 1.0]


def test_coroutines_sharing_a_bucket_keep_its_rate_and_take_turns() -> None:
    order: list[int] = []
    sent = [0, 0, 0, 0]

    async def sender(
        index: int, limiter: AsyncRateLimiter, loop: asyncio.AbstractEventLoop
    ) -> None:
        while True:
            await limiter.acquire(16 * KIB)
            if loop.time() >= 10.0:
                return
            order.append(index)
            sent[index] += 16 * KIB

    async def main() -> None:
        loop = asyncio.get_running_loop()
        limiter = AsyncRateLimiter(TokenBucket(1 * MIB, clock=loop.time))
        async with asyncio.TaskGroup() as group:
            for index in range(4):
                group.create_task(sender(index, limiter, loop))

    run_virtual(main())
    assert abs(sum(sent) / (1 * MIB * 10) - 1) <= TOLERANCE
    for share in sent:
        assert abs(share / (1 * MIB * 10 / 4) - 1) <= TOLERANCE
    # Sender 0 reserves twice before the others run (a zero wait does not yield); from then on
    # each reservation queues behind all earlier ones: round robin.
    assert order[1:13] == [0, 1, 2, 3] * 3


def test_async_task_under_host_gets_the_host_rate() -> None:
    sent = 0

    async def main() -> None:
        nonlocal sent
        loop = asyncio.get_running_loop()
        host = TokenBucket(20 * MIB, clock=loop.time)
        limiter = AsyncRateLimiter(TokenBucket(100 * MIB, clock=loop.time, parent=host))
        while True:
            await limiter.acquire(64 * KIB)
            if loop.time() >= 10.0:
                return
            sent += 64 * KIB

    run_virtual(main())
    assert abs(sent / (20 * MIB * 10) - 1) <= TOLERANCE


def test_cancelled_acquire_refunds_its_reservation() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(1 * MIB, clock=loop.time)
        limiter = AsyncRateLimiter(bucket)
        await limiter.acquire(1 * MIB)
        waiter = asyncio.create_task(limiter.acquire(1 * MIB))
        await asyncio.sleep(0.5)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert bucket.available_bytes() == pytest.approx(-0.5 * MIB)

    run_virtual(main())


def test_unlimited_acquire_does_not_sleep() -> None:
    async def never_sleep(seconds: float) -> None:
        raise AssertionError(f"slept {seconds}")

    limiter = AsyncRateLimiter(TokenBucket(None, clock=FakeClock()), sleep=never_sleep)

    async def main() -> None:
        for _ in range(10):
            await limiter.acquire(1 * MIB)

    asyncio.run(main())
