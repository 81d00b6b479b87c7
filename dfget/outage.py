"""A tracker outage when a download starts is not an origin stampede.

A client that cannot reach any tracker at its first contact (one being restarted or
redeployed) does not fetch the whole file from the origin at once, as every other client
starting then would too. It describes the task from the origin's answer (as the first peer
of a task does) and offers its manifest again at once: a tracker that was only slow (a
crowd's first seconds) may have answered by then. Still none: it fetches only its share of the
file from the origin (``origin_share``: a few pieces, placed by its peer id so that clients
spread over the file) and offers its manifest with exponential backoff and jitter
(``wait_for_tracker``) for up to ``OUTAGE_RETRY_S``. A tracker back in time: the download
joins the swarm. Still none: it fetches the rest from the origin (the fallback of old, only
later).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Final

from peerwire.coordination import Coordinator, TaskManifestDoc, TrackerRefused, TrackerUnavailable
from peerwire.ids import PeerId, TaskId
from peerwire.manifest import ManifestConflict

log = logging.getLogger(__name__)

#: How long a client keeps trying to reach a tracker it could not reach at its start.
OUTAGE_RETRY_S: Final = 30.0
#: The first retry's delay; each failure doubles it, up to ``MAX_DELAY_S``; each delay is
#: drawn from half to one and a half of it (jitter: clients that failed together do not all
#: come back in the same instant).
FIRST_DELAY_S: Final = 0.25
MAX_DELAY_S: Final = 4.0
#: A client's share of the file from the origin meanwhile: this fraction of its pieces, at
#: least ``MIN_SHARE_PIECES``.
SHARE_FRACTION: Final = 1 / 20
MIN_SHARE_PIECES: Final = 2


def origin_share(peer_id: PeerId, num_pieces: int) -> tuple[int, ...]:
    """The pieces this client reads from the origin while no tracker answers: one run of
    ``SHARE_FRACTION`` of the file starting where its peer id points (one Range request)."""
    if num_pieces <= 0:
        return ()
    count = min(num_pieces, max(MIN_SHARE_PIECES, round(num_pieces * SHARE_FRACTION)))
    start = int.from_bytes(peer_id.raw[-8:], "big") % num_pieces
    return tuple(sorted((start + i) % num_pieces for i in range(count)))


async def wait_for_tracker(
    coordinator: Coordinator,
    task_id: TaskId,
    doc: Callable[[], TaskManifestDoc],
    *,
    bound_s: float = OUTAGE_RETRY_S,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    jitter: Callable[[], float] = random.random,
) -> str | None:
    """Offer our manifest until a tracker takes it: None once one has (or holds one
    already), else why the swarm is out of reach (still unreachable after ``bound_s``, or
    a refusal)."""
    deadline = clock() + bound_s
    delay_s = FIRST_DELAY_S
    problem = "no tracker reachable"
    while True:
        wait_s = min(delay_s * (0.5 + jitter()), max(0.0, deadline - clock()))
        await sleep(wait_s)
        try:
            return await _offer(coordinator, task_id, doc)
        except TrackerUnavailable as exc:
            problem = str(exc)
        if clock() >= deadline:
            return f"{problem} (for {bound_s:.0f}s)"
        delay_s = min(MAX_DELAY_S, delay_s * 2)


async def ride_outage(
    reason: str,
    coordinator: Coordinator,
    task_id: TaskId,
    doc: Callable[[], TaskManifestDoc],
    fetch_share: Callable[[], None],
) -> str | None:
    """No tracker answered this peer's first contact (``reason``): None once one takes its
    manifest, else why the swarm stays out of reach. The tracker is asked again at once
    before any origin read: one that was only slow (a crowd's first seconds, or this host too
    busy to read the answer in time) may have answered the crowd by then, and one that is
    down refuses at once. Then ``fetch_share`` starts this peer's share from the origin while
    ``wait_for_tracker`` tries on."""
    try:
        refusal = await _offer(coordinator, task_id, doc)
    except TrackerUnavailable:
        pass
    else:
        if refusal is None:
            log.info("%s; the tracker answered when asked again", reason)
        return refusal
    log.warning("%s: fetching this peer's share from the origin, retrying the tracker", reason)
    fetch_share()
    return await wait_for_tracker(coordinator, task_id, doc)


async def _offer(
    coordinator: Coordinator, task_id: TaskId, doc: Callable[[], TaskManifestDoc]
) -> str | None:
    """Offer our manifest once: None when a tracker took it (or holds one already), why when
    it refused this peer; TrackerUnavailable when none answered."""
    try:
        await coordinator.put_manifest(task_id, doc())
    except ManifestConflict:
        pass  # another peer's manifest is the task's: the swarm will say which
    except TrackerRefused as exc:
        return f"the tracker refused this peer: {exc}"
    return None
