"""dfget.originplan.next_run and origin_workers: how an origin fetcher cuts its queue into Range
requests, and how many it keeps in flight."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dfget.originplan import (
    FAST_ORIGIN_BPS,
    FAST_ORIGIN_WORKERS,
    LONG_ASSIGNMENT,
    OriginMeasure,
    next_run,
    origin_workers,
)

PIECE = 16 * 1024


def size_of(index: int) -> int:
    return PIECE


def test_ascending_from_the_lowest_queued_piece_up_to_the_limit() -> None:
    queue = set(range(10, 20))
    assert next_run(queue, size_of, 4 * PIECE, descending=False) == ([10, 11, 12, 13], 4 * PIECE)
    assert queue == set(range(10, 20))  # left unchanged


def test_descending_from_the_highest_queued_piece_returned_ascending() -> None:
    run, size = next_run(set(range(10, 20)), size_of, 3 * PIECE, descending=True)
    assert (run, size) == ([17, 18, 19], 3 * PIECE)


def test_a_run_stops_at_a_gap_and_always_holds_one_piece() -> None:
    assert next_run({1, 2, 4, 5}, size_of, 10 * PIECE, descending=False)[0] == [1, 2]
    assert next_run({1, 2, 4, 5}, size_of, 10 * PIECE, descending=True)[0] == [4, 5]
    assert next_run({7, 8}, size_of, 0, descending=False) == ([7], PIECE)


def test_the_short_last_piece_counts_its_own_size() -> None:
    def sizes(index: int) -> int:
        return 100 if index == 9 else PIECE

    assert next_run({8, 9}, sizes, PIECE + 100, descending=True) == ([8, 9], PIECE + 100)


@given(
    queue=st.sets(st.integers(0, 300), min_size=1, max_size=80),
    limit=st.integers(0, 40 * PIECE),
    descending=st.booleans(),
)
def test_a_run_is_contiguous_queued_from_the_right_end_and_within_the_limit(
    queue: set[int], limit: int, descending: bool
) -> None:
    run, size = next_run(queue, size_of, limit, descending=descending)
    assert run == list(range(run[0], run[-1] + 1))
    assert set(run) <= queue
    assert (run[-1] == max(queue)) if descending else (run[0] == min(queue))
    assert size == PIECE * len(run)
    assert size <= max(limit, PIECE)
    # It stops only at the limit or a gap.
    following = run[0] - 1 if descending else run[-1] + 1
    assert following not in queue or size + PIECE > limit


def test_a_long_assignment_gets_one_request_at_a_near_origin_and_more_at_a_far_one() -> None:
    unknown, near = OriginMeasure(), OriginMeasure(rate_bps=300e6, response_s=0.003)
    far_slow = OriginMeasure(rate_bps=5e6, response_s=0.08)
    far_fast = OriginMeasure(rate_bps=FAST_ORIGIN_BPS, response_s=0.08)
    assert origin_workers(LONG_ASSIGNMENT - 1, far_fast) == 1  # a short one: one request
    assert origin_workers(LONG_ASSIGNMENT, near) == 1  # its round trip costs nothing
    assert origin_workers(LONG_ASSIGNMENT, unknown) == 2
    assert origin_workers(LONG_ASSIGNMENT, far_slow) == 2
    assert origin_workers(LONG_ASSIGNMENT, far_fast) == FAST_ORIGIN_WORKERS
