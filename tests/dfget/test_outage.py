"""``dfget.outage``: the share a client reads from the origin while no tracker answers, and the
retries with backoff and jitter, bounded in time (a fake clock and sleep; a scripted
coordinator)."""

from __future__ import annotations

import asyncio
from typing import Any

from dfget.outage import (
    FIRST_DELAY_S,
    MAX_DELAY_S,
    MIN_SHARE_PIECES,
    origin_share,
    ride_outage,
    wait_for_tracker,
)
from peerwire.coordination import TaskManifestDoc, TrackerRefused, TrackerUnavailable
from peerwire.ids import PeerId, TaskId

DOC = TaskManifestDoc(url="http://o/f", total_length=1 << 20, piece_length=1 << 14)
TASK = TaskId(b"\1" * 20)


def test_the_share_is_a_twentieth_of_the_file_placed_by_the_peer_id() -> None:
    starts = set()
    for n in range(50):
        share = origin_share(PeerId(n.to_bytes(20, "big")), 500)
        assert len(share) == 25
        assert len(set(share)) == 25 and all(0 <= i < 500 for i in share)
        starts.add(share[0])
    assert len(starts) > 25  # clients spread over the file
    assert len(origin_share(PeerId(b"\0" * 20), 3)) == MIN_SHARE_PIECES
    assert origin_share(PeerId(b"\0" * 20), 0) == ()


class Scripted:
    """A coordinator whose put_manifest fails ``failures`` times, then answers (or refuses)."""

    def __init__(self, failures: int, then: Exception | None = None) -> None:
        self.failures = failures
        self.then = then
        self.calls = 0

    async def put_manifest(self, task: TaskId, doc: TaskManifestDoc) -> TaskManifestDoc:
        self.calls += 1
        if self.calls <= self.failures:
            raise TrackerUnavailable("no tracker reachable: refused")
        if self.then is not None:
            raise self.then
        return doc


def run(
    coordinator: Scripted, jitter: float = 0.5, bound_s: float = 30.0
) -> tuple[Any, list[float]]:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    result = asyncio.run(
        wait_for_tracker(
            coordinator,  # type: ignore[arg-type]
            TASK,
            lambda: DOC,
            bound_s=bound_s,
            sleep=sleep,
            clock=lambda: now[0],
            jitter=lambda: jitter,
        )
    )
    return result, slept


def test_retries_back_off_exponentially_until_the_tracker_answers() -> None:
    result, slept = run(Scripted(failures=4))
    assert result is None
    assert slept == [FIRST_DELAY_S * 2**k for k in range(5)]


def test_jitter_spreads_each_delay_between_half_and_one_and_a_half() -> None:
    _, low = run(Scripted(failures=2), jitter=0.0)
    _, high = run(Scripted(failures=2), jitter=0.999)
    assert low[0] == FIRST_DELAY_S / 2 and 1.49 * FIRST_DELAY_S < high[0] < 1.5 * FIRST_DELAY_S


def test_the_retries_stop_at_the_bound_with_the_reason() -> None:
    result, slept = run(Scripted(failures=1000), bound_s=30.0)
    assert result is not None and "refused" in result and "30s" in result
    assert sum(slept) == 30.0
    assert max(slept) <= MAX_DELAY_S


def test_a_refusal_ends_the_wait_at_once() -> None:
    result, slept = run(Scripted(failures=1, then=TrackerRefused("closed swarm")))
    assert result is not None and "closed swarm" in result
    assert len(slept) == 2


def ride(coordinator: Scripted) -> tuple[str | None, int]:
    shares = []
    result = asyncio.run(
        ride_outage(
            "tracker unreachable: timed out",
            coordinator,  # type: ignore[arg-type]
            TASK,
            lambda: DOC,
            lambda: shares.append(1),
        )
    )
    return result, len(shares)


def test_a_tracker_that_answers_when_asked_again_costs_no_origin_read() -> None:
    """Its first answer came too late (a crowd's first seconds): no share from the origin."""
    tracker = Scripted(failures=0)
    assert ride(tracker) == (None, 0)
    assert tracker.calls == 1


def test_a_tracker_still_away_when_asked_again_sends_the_peer_to_its_share() -> None:
    tracker = Scripted(failures=1)
    assert ride(tracker) == (None, 1)
    assert tracker.calls == 2  # then the backoff's first retry found it


def test_a_refusal_when_asked_again_is_the_answer_and_no_origin_read() -> None:
    result, shares = ride(Scripted(failures=0, then=TrackerRefused("no")))
    assert result is not None and "refused" in result
    assert shares == 0
