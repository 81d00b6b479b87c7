"""Token buckets for ``--rate``-style limits: per task, per host, upload apart from download.

The core, ``TokenBucket``, is sans-IO: it reads an injected clock and answers "how long must you
wait"; it never sleeps. ``AsyncRateLimiter`` is the thin asyncio wrapper that does the sleeping.

Model: reservations, paid after
-------------------------------
A sender calls ``reserve(n)`` before writing ``n`` bytes. The bucket takes the ``n`` tokens at
once, even if that puts it into debt, and returns how long the caller must wait before writing:
the time until the debt that existed *before* this reservation is paid off. So each write of
``n`` bytes books ``n / rate`` seconds of the link, starting when the previous booking ends.
Consequences, all deliberate:

* A reservation larger than the burst (a 1 MiB block at 1 MiB/s) never deadlocks: it goes out
  as soon as the bucket is out of debt and makes the next caller wait one second.
* Concurrent callers are served first come, first served: each later reservation waits behind
  the debt of all earlier ones, so callers sharing a bucket together keep to its rate.
* A bucket starts **empty** (no tokens, no debt). The first write goes out at once and from then
  on, over any span ``[0, T)`` of a continuous transfer, the bytes written are between
  ``rate * T`` and ``rate * T`` plus one reservation. At 1 MiB/s with 16 KiB blocks that is within
  1.6% from the very first second, and 0.16% over 10 s; the error never accumulates.
* Capacity a sender leaves unused (idle, or slower than the rate) is kept as tokens, up to
  ``burst_bytes``. After an idle spell, ``burst_bytes`` plus one reservation go out at once.
  The default burst is ``DEFAULT_BURST_S`` (50 ms) worth of the rate: enough to make good a
  sender that wakes up late (timers are coarse), small enough that a full bucket adds at most
  0.5% to a 10 s transfer.

Nesting and wiring
------------------
A bucket may have a ``parent``; ``reserve`` charges the whole chain up to the root and the wait
is the longest of the chain. The intended wiring in a daemon is two separate trees, because
upload and download capacity are separate::

    host_down = TokenBucket(host_download_bps, clock=clock)          # all tasks of the daemon
    task_down = TokenBucket(task_rate_bps, clock=clock, parent=host_down)   # --rate
    host_up = TokenBucket(host_upload_bps, clock=clock)
    task_up = TokenBucket(None, clock=clock, parent=host_up)         # unlimited, host caps it

Uploads reserve a block's length before writing the ``piece`` message. Downloads reserve a
block's length before sending the ``request`` for it (the remote can only send what we asked
for), so the request rate, and with it the arrival rate, keeps to the limit. A ``None`` rate is
unlimited: the bucket only passes reservations on to its parent.

Changing a rate (``set_rate``) applies from that moment: time elapsed so far is accounted at the
old rate, and outstanding debt (in bytes) is paid off at the new rate. Callers already sleeping
keep the wait they were given.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Final

#: Default burst, as seconds' worth of the rate.
DEFAULT_BURST_S: Final = 0.05


def default_burst_bytes(rate_bps: float) -> int:
    """Burst used when none is given: ``DEFAULT_BURST_S`` worth of ``rate_bps``, at least 1."""
    return max(1, math.ceil(rate_bps * DEFAULT_BURST_S))


class TokenBucket:
    """A token bucket of ``rate_bps`` bytes per second, holding at most ``burst_bytes``.

    ``rate_bps=None`` is unlimited. ``burst_bytes=None`` picks ``default_burst_bytes`` and follows
    later rate changes. ``clock`` returns monotonic seconds; a child should share its parent's.
    """

    def __init__(
        self,
        rate_bps: float | None,
        burst_bytes: int | None = None,
        *,
        clock: Callable[[], float],
        parent: TokenBucket | None = None,
    ) -> None:
        self._clock = clock
        self._parent = parent
        self._last_s = clock()
        self._tokens = 0.0  # bytes; negative is debt
        self._rate_bps: float | None = None
        self._burst_bytes = 0
        self._burst_follows_rate = True
        self._configure(rate_bps, burst_bytes)
        # The parent is fixed here, and a new bucket cannot be anyone's ancestor yet, so chains
        # never form a cycle.

    @property
    def rate_bps(self) -> float | None:
        return self._rate_bps

    @property
    def burst_bytes(self) -> int:
        return self._burst_bytes

    @property
    def parent(self) -> TokenBucket | None:
        return self._parent

    @property
    def unlimited(self) -> bool:
        """True when neither this bucket nor any ancestor has a rate now: reserving is free."""
        bucket: TokenBucket | None = self
        while bucket is not None:
            if bucket._rate_bps is not None:
                return False
            bucket = bucket._parent
        return True

    def chain_rate_bps(self) -> float | None:
        """The slowest rate of this bucket and its ancestors now (None: all unlimited)."""
        slowest: float | None = None
        bucket: TokenBucket | None = self
        while bucket is not None:
            rate = bucket._rate_bps
            if rate is not None and (slowest is None or rate < slowest):
                slowest = rate
            bucket = bucket._parent
        return slowest

    def reserve(self, size_bytes: int) -> float:
        """Take ``size_bytes`` tokens from this bucket and every ancestor; seconds to wait.

        The caller must wait that long before writing. ``reserve(0)`` takes nothing and returns
        the time until every bucket of the chain is out of debt.
        """
        _check_size(size_bytes)
        wait_s = 0.0
        bucket: TokenBucket | None = self
        while bucket is not None:
            wait_s = max(wait_s, bucket._take(size_bytes))
            bucket = bucket._parent
        return wait_s

    def refund(self, size_bytes: int) -> None:
        """Give back tokens of a reservation that will not be written (its sender went away).

        Waits already handed to later callers are not shortened; new reservations benefit.
        """
        _check_size(size_bytes)
        bucket: TokenBucket | None = self
        while bucket is not None:
            bucket._give(size_bytes)
            bucket = bucket._parent

    def delay_s(self) -> float:
        """Seconds a reservation made now would wait (0 when no bucket of the chain is in debt)."""
        wait_s = 0.0
        bucket: TokenBucket | None = self
        while bucket is not None:
            wait_s = max(wait_s, bucket._own_delay_s())
            bucket = bucket._parent
        return wait_s

    def available_bytes(self) -> float:
        """Tokens in this bucket now (negative: debt); ``math.inf`` when unlimited."""
        self._refill()
        return math.inf if self._rate_bps is None else self._tokens

    def set_rate(self, rate_bps: float | None, burst_bytes: int | None = None) -> None:
        """Change the rate (and burst) from now on; see the module docstring."""
        self._refill()
        was_unlimited = self._rate_bps is None
        self._configure(rate_bps, burst_bytes)
        if self._rate_bps is None or was_unlimited:
            self._tokens = 0.0  # an unlimited spell leaves neither debt nor credit behind
        else:
            self._tokens = min(self._tokens, float(self._burst_bytes))

    def __repr__(self) -> str:
        return (
            f"TokenBucket(rate_bps={self._rate_bps!r}, burst_bytes={self._burst_bytes}, "
            f"tokens={self._tokens:.0f}, parent={self._parent!r})"
        )

    def _configure(self, rate_bps: float | None, burst_bytes: int | None) -> None:
        if rate_bps is not None and not (math.isfinite(rate_bps) and rate_bps > 0):
            raise ValueError(f"rate_bps must be a finite number > 0 or None, got {rate_bps!r}")
        if burst_bytes is not None and burst_bytes < 0:
            raise ValueError(f"burst_bytes must be >= 0, got {burst_bytes}")
        self._rate_bps = rate_bps
        self._burst_follows_rate = burst_bytes is None
        if burst_bytes is not None:
            self._burst_bytes = burst_bytes
        elif rate_bps is not None:
            self._burst_bytes = default_burst_bytes(rate_bps)
        else:
            self._burst_bytes = 0

    def _refill(self) -> None:
        now_s = self._clock()
        elapsed_s = max(0.0, now_s - self._last_s)  # a clock that steps back adds nothing
        self._last_s = max(self._last_s, now_s)
        if self._rate_bps is not None:
            self._tokens = min(float(self._burst_bytes), self._tokens + elapsed_s * self._rate_bps)

    def _own_delay_s(self) -> float:
        self._refill()
        if self._rate_bps is None or self._tokens >= 0:
            return 0.0
        return -self._tokens / self._rate_bps

    def _take(self, size_bytes: int) -> float:
        wait_s = self._own_delay_s()
        if self._rate_bps is not None:
            self._tokens -= size_bytes
        return wait_s

    def _give(self, size_bytes: int) -> None:
        self._refill()
        if self._rate_bps is not None:
            self._tokens = min(float(self._burst_bytes), self._tokens + size_bytes)


def _check_size(size_bytes: int) -> None:
    if size_bytes < 0:
        raise ValueError(f"size_bytes must be >= 0, got {size_bytes}")


class AsyncRateLimiter:
    """``await acquire(n)`` before writing ``n`` bytes: reserves on the bucket, sleeps the wait.

    Build the bucket with ``clock=time.monotonic``, the clock asyncio's timers run on (uvloop's
    too, at millisecond resolution: a sleep that ends early or late is made good by the bucket,
    whose accounting uses absolute time). ``sleep`` is injectable for tests.
    """

    def __init__(
        self,
        bucket: TokenBucket,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._bucket = bucket
        self._sleep = sleep

    @property
    def bucket(self) -> TokenBucket:
        return self._bucket

    async def acquire(self, size_bytes: int) -> None:
        """Return when ``size_bytes`` may be written; ``acquire(0)`` waits out current debt.

        Cancelled while waiting, the reservation is refunded, since nothing will be written.
        """
        wait_s = self._bucket.reserve(size_bytes)
        if wait_s <= 0:
            return
        try:
            await self._sleep(wait_s)
        except asyncio.CancelledError:
            self._bucket.refund(size_bytes)
            raise
