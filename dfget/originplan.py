"""How an origin fetcher plans its Range requests (pure: no I/O).

A fetcher (``dfget.originfetch``) works through the pieces it was assigned in *runs*: consecutive
queued pieces fetched with one Range request and stored as they arrive. How long a run is and how
many are in flight at once follow what the host measured of that origin (``OriginMeasure``,
shared by a daemon's tasks): its rate and how soon it answers a request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

#: Most bytes fetched from the origin in one Range request (a run of consecutive pieces; its
#: pieces are stored as they arrive): each request costs the origin some CPU, so runs are long.
RUN_BYTES: Final = 32 * 1024 * 1024
#: A run of origin pieces is sized to arrive in about this long.
RUN_SECONDS: Final = 0.5
#: A long assignment (this many pieces or more) may get several Range requests at once.
LONG_ASSIGNMENT: Final = 32
#: An origin that answers a Range request this soon (a registry next door) gets one request at
#: a time: its round trip is nothing next to a run, and one stream in order lets the whole-file
#: digest be hashed from the bytes as they arrive, where a second stream's pieces are read back
#: later.
NEAR_ORIGIN_S: Final = 0.02
#: Otherwise two, so that the round trip is not paid between runs; from this rate on,
#: ``FAST_ORIGIN_WORKERS`` (a fast origin far away: parallel streams against its latency).
FAST_ORIGIN_BPS: Final = 64 * 1024 * 1024
FAST_ORIGIN_WORKERS: Final = 4


def origin_key(url: str) -> str:
    """What identifies an origin for its remembered rate: scheme, host and port."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}".lower()


@dataclass(slots=True)
class OriginMeasure:
    """What this host measured of an origin (shared by a daemon's tasks): the rate its Range
    requests delivered (bytes/s, smoothed) and how soon it answered the latest one."""

    rate_bps: float | None = None
    response_s: float | None = None


def origin_workers(queued: int, measure: OriginMeasure) -> int:
    """Range requests to keep in flight for ``queued`` pieces of an assignment."""
    if queued < LONG_ASSIGNMENT:
        return 1
    if measure.response_s is not None and measure.response_s <= NEAR_ORIGIN_S:
        return 1
    if measure.rate_bps is not None and measure.rate_bps >= FAST_ORIGIN_BPS:
        return FAST_ORIGIN_WORKERS
    return 2


def next_run(
    queue: set[int], piece_size: Callable[[int], int], limit_bytes: int, *, descending: bool
) -> tuple[list[int], int]:
    """The next Range request of an origin fetcher: the lowest queued piece (the highest when
    ``descending``) and the queued pieces next to it, in that direction, while their sizes add up
    to at most ``limit_bytes`` (always at least the first piece). Returns (the run ascending, its
    bytes); ``queue`` must not be empty and is left unchanged."""
    step = -1 if descending else 1
    index = max(queue) if descending else min(queue)
    run = [index]
    size = piece_size(index)
    while True:
        following = index + step * len(run)
        if following not in queue or size + piece_size(following) > limit_bytes:
            break
        size += piece_size(following)
        run.append(following)
    run.sort()
    return run, size
