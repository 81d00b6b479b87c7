"""How many requests to keep in flight at one peer: about ``target_s`` of what it delivers.

A fixed pipeline suits one kind of link only. Deep enough for a 1 GB/s loopback peer (32 blocks
of 512 KiB), it is a minute of queue at a peer that sends us 30 KB/s: requests wait there past
their timeout, are asked again of another peer, and both copies arrive. Sized to what the peer
actually delivers, a request waits about ``target_s`` whatever the link.

The rate is measured from arrivals, one sample per pipeline's worth of blocks (or per
``window_s``, whichever comes first), smoothed. A deeper pipeline can only reveal a faster peer,
so the depth starts at ``min_depth`` and grows from what the last sample showed - on a fast link
within a few round trips, since one sample covers one pipeline.

Sans-IO: times are passed in.
"""

from __future__ import annotations

import math


class PipelineSizer:
    """Pipeline depth (in blocks) for one peer, from the rate it delivers."""

    __slots__ = (
        "_blocks",
        "_bytes",
        "_started_s",
        "block_bytes",
        "max_depth",
        "min_depth",
        "rate_bps",
        "target_s",
        "window_s",
    )

    def __init__(
        self,
        *,
        block_bytes: int,
        max_depth: int,
        min_depth: int = 2,
        target_s: float = 1.0,
        window_s: float = 0.5,
    ) -> None:
        if block_bytes < 1:
            raise ValueError(f"block_bytes must be positive, not {block_bytes}")
        if not 1 <= min_depth <= max_depth:
            raise ValueError(f"need 1 <= min_depth <= max_depth, not {min_depth}, {max_depth}")
        if not (target_s > 0 and window_s > 0):
            raise ValueError("target_s and window_s must be positive")
        self.block_bytes = block_bytes
        self.max_depth = max_depth
        self.min_depth = min_depth
        self.target_s = target_s
        self.window_s = window_s
        #: Smoothed bytes/s this peer delivered; None before the first sample.
        self.rate_bps: float | None = None
        self._started_s: float | None = None
        self._blocks = 0
        self._bytes = 0

    def depth(self) -> int:
        """Requests to keep in flight now."""
        if self.rate_bps is None:
            return self.min_depth
        wanted = self.rate_bps * self.target_s / self.block_bytes
        if wanted >= self.max_depth:
            return self.max_depth
        return max(self.min_depth, math.ceil(wanted - 1e-6))  # 8.0000001 blocks is 8

    def requested(self, now: float) -> None:
        """Requests were sent: a sample window starts here if none is open (the time the peer
        was idle, with nothing asked of it, is not counted against its rate)."""
        if self._started_s is None:
            self._started_s = now

    def arrived(self, nbytes: int, now: float) -> None:
        """A block of ``nbytes`` arrived."""
        if self._started_s is None:
            self._started_s = now
            return
        self._blocks += 1
        self._bytes += nbytes
        elapsed_s = now - self._started_s
        if elapsed_s <= 0 or (self._blocks < self.depth() and elapsed_s < self.window_s):
            return
        sample = self._bytes / elapsed_s
        previous = self.rate_bps
        self.rate_bps = sample if previous is None else 0.5 * previous + 0.5 * sample
        self._started_s = now
        self._blocks = 0
        self._bytes = 0

    def idle(self) -> None:
        """Nothing is asked of the peer any more: close the sample window."""
        self._started_s = None
        self._blocks = 0
        self._bytes = 0
