"""What a long-lived node (dfdaemon) shares between its downloads, and small helpers of a
download's lifetime."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dfget.httpclient import HttpClient
from dfget.originplan import OriginMeasure
from peerwire.ratelimit import TokenBucket
from peerwire.shell import SharedListener

if TYPE_CHECKING:
    from dfget.coordinators.serfnode import SerfNode

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Host:
    """What a long-lived node (dfdaemon) shares between its downloads: the host-wide token
    buckets (each task's ``--rate`` bucket is a child of ``download``) and one peer port."""

    download: TokenBucket | None = None
    upload: TokenBucket | None = None
    listener: SharedListener | None = None
    #: Each origin as last measured (``originplan.origin_key`` -> rate, answer time): the next
    #: task from it skips the slow start of its Range requests and knows how many to send.
    origins: dict[str, OriginMeasure] = field(default_factory=dict)
    #: One HTTP client for every task's origin requests, so that connections to an origin are
    #: kept and reused from one task to the next (it keeps no cookies: tasks carry their own
    #: credentials). None: each download opens its own.
    origin_client: HttpClient | None = None
    #: The node's part in a decentralized cluster (``--coordinator serf``), shared by every
    #: download; None: each download with ``options.serf`` starts its own.
    serf: SerfNode | None = None


async def seed_for(seconds: float) -> None:
    """Keep serving the finished file for ``seconds``; ``math.inf`` until cancelled."""
    log.info("seeding for %.0fs", seconds)
    if math.isinf(seconds):
        await asyncio.get_running_loop().create_future()
    await asyncio.sleep(seconds)


async def close_all(*closers: Callable[[], Awaitable[None]] | None) -> None:
    """Await every closer in turn, also after one failed or the task was cancelled meanwhile
    (a download that ends by itself may be cancelled while it cleans up); the first error is
    raised at the end."""
    error: BaseException | None = None
    for close in closers:
        if close is None:
            continue
        try:
            await close()
        except BaseException as exc:  # re-raised below, once the others ran
            error = error or exc
    if error is not None:
        raise error


def bucket(
    rate_bps: float | None, parent: TokenBucket | None, clock: Callable[[], float]
) -> TokenBucket | None:
    """This task's bucket: its own rate (None = unlimited) under the host's, if any."""
    if rate_bps is None and parent is None:
        return None
    return TokenBucket(rate_bps, clock=clock, parent=parent)
