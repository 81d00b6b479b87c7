"""tracker.assign: disjoint, budgeted, expiring back-to-source assignments."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tracker.assign import (
    DEFAULT_PIECES,
    STEAL_INFLIGHT_S,
    STEAL_KEEP_MARGIN,
    STEAL_MIN_PIECES,
    SourcePlanner,
    bitfield_to_int,
    full_mask,
    piece_indices,
)

PIECE = 16 * 1024
INTERVAL_S = 5.0
TTL_S = 20.0


def bitfield(pieces: set[int] | range, num_pieces: int) -> bytes:
    """BEP 3 bitfield, built byte by byte (independently of the code under test)."""
    data = bytearray((num_pieces + 7) // 8)
    for i in pieces:
        data[i // 8] |= 0x80 >> (i % 8)
    return bytes(data)


def have(pieces: set[int] | range, num_pieces: int) -> int:
    return bitfield_to_int(bitfield(pieces, num_pieces))


def planner(num_pieces: int = 100, *, budget: int = 4, max_pieces: int = 16) -> SourcePlanner:
    return SourcePlanner(num_pieces, budget=budget, max_pieces=max_pieces, ttl_s=TTL_S)


def ask(
    plan: SourcePlanner,
    peer: bytes,
    now: float = 0.0,
    available: int = 0,
    rate_bps: float | None = None,
) -> tuple[int, ...]:
    return plan.assign(
        peer, now, available, rate_bps=rate_bps, piece_length=PIECE, interval_s=INTERVAL_S
    )


# --- bitset helpers -----------------------------------------------------------------------------


def test_piece_zero_is_the_high_bit_of_the_first_byte() -> None:
    assert bitfield_to_int(b"\x80\x00") == 1 << 15
    assert piece_indices(bitfield_to_int(b"\x80\x00"), 9) == [0]
    assert piece_indices(bitfield_to_int(b"\x00\x80"), 9) == [8]


def test_full_mask_leaves_the_spare_bits_clear() -> None:
    assert full_mask(0) == 0
    assert full_mask(8) == 0xFF
    assert full_mask(10) == 0xFFC0
    assert full_mask(10) == bitfield_to_int(bitfield(range(10), 10))


def test_piece_indices_ignores_spare_bits() -> None:
    assert piece_indices(0xFFFF, 10) == list(range(10))


def test_piece_indices_rejects_negative_masks() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        piece_indices(-1, 8)


@given(st.integers(0, 300).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n)))))
def test_piece_indices_inverts_the_bep3_bitfield(case: tuple[int, set[int]]) -> None:
    num_pieces, pieces = case
    pieces = {i for i in pieces if i < num_pieces}
    assert piece_indices(have(pieces, num_pieces), num_pieces) == sorted(pieces)


# --- choosing pieces ------------------------------------------------------------------------------


def test_first_assignment_is_the_lowest_contiguous_run() -> None:
    assert ask(planner(), b"a") == (0, 1)


def test_each_peer_gets_the_next_run_disjoint_from_the_others() -> None:
    plan = planner()
    assert ask(plan, b"a") == (0, 1)
    assert ask(plan, b"b") == (2, 3)
    assert ask(plan, b"c", rate_bps=3 * PIECE / INTERVAL_S) == (4, 5, 6)
    assert plan.fetchers == 3
    assert plan.assigned_pieces == 7


def test_pieces_held_in_the_swarm_are_never_assigned() -> None:
    plan = planner(20)
    available = have({0, 1, 2, 4, 5, 9}, 20)
    rate = 6 * PIECE / INTERVAL_S
    # The gap at 3 is taken whole, then the run from 6 up to the target size.
    assert ask(plan, b"a", available=available, rate_bps=rate) == (3, 6, 7, 8, 10, 11)


def test_a_short_tail_is_all_there_is_to_assign() -> None:
    plan = planner(10)
    assert ask(plan, b"a", available=have(range(8), 10), rate_bps=1e9) == (8, 9)


@pytest.mark.parametrize(
    ("rate_bps", "max_pieces", "expected"),
    [
        (None, 16, DEFAULT_PIECES),
        (None, 1, 1),
        (0.0, 16, 1),
        (-5.0, 16, 1),
        (1.0, 16, 1),
        (PIECE / INTERVAL_S, 16, 1),
        (PIECE / INTERVAL_S + 1, 16, 2),
        (10 * PIECE / INTERVAL_S, 16, 10),
        (100 * PIECE / INTERVAL_S, 16, 16),
        (math.inf, 16, 16),
        (math.nan, 16, DEFAULT_PIECES),
    ],
)
def test_assignment_size_covers_one_interval_at_the_peer_rate(
    rate_bps: float | None, max_pieces: int, expected: int
) -> None:
    plan = planner(max_pieces=max_pieces)
    assert len(ask(plan, b"a", rate_bps=rate_bps)) == expected


def test_a_faster_peer_is_topped_up_to_its_new_size() -> None:
    plan = planner()
    assert ask(plan, b"a") == (0, 1)
    assert ask(plan, b"b") == (2, 3)
    assert ask(plan, b"a", rate_bps=4 * PIECE / INTERVAL_S) == (0, 1, 4, 5)
    assert plan.assigned_total == 6


def test_fetched_pieces_leave_the_assignment_and_are_replaced() -> None:
    plan = planner()
    assert ask(plan, b"a") == (0, 1)
    assert ask(plan, b"a", now=1.0, available=have({0}, 100)) == (1, 2)
    assert plan.assigned_pieces == 2
    assert plan.assigned_total == 3


def test_an_unchanged_announce_returns_the_same_assignment() -> None:
    plan = planner()
    assert ask(plan, b"a") == ask(plan, b"a", now=1.0) == (0, 1)
    assert plan.assigned_total == 2


def test_nothing_is_assigned_once_every_piece_is_available() -> None:
    plan = planner(10)
    assert ask(plan, b"a", rate_bps=1e9) == tuple(range(10))
    everything = full_mask(10)
    assert ask(plan, b"a", now=1.0, available=everything) == ()
    assert ask(plan, b"b", now=1.0, available=everything) == ()
    assert (plan.fetchers, plan.assigned_pieces, plan.missing(everything)) == (0, 0, 0)


def test_an_empty_task_assigns_nothing() -> None:
    plan = planner(0)
    assert ask(plan, b"a") == ()
    assert plan.missing(0) == 0


def test_missing_counts_pieces_neither_available_nor_assigned() -> None:
    plan = planner(10)
    available = have({0, 1}, 10)
    assert plan.missing(available) == 8
    ask(plan, b"a", available=available)
    assert plan.missing(available) == 6


# --- budget, expiry, release ---------------------------------------------------------------------


def test_budget_limits_how_many_peers_fetch_at_once() -> None:
    plan = planner(budget=2)
    assert ask(plan, b"a") == (0, 1)
    assert ask(plan, b"b") == (2, 3)
    assert ask(plan, b"c") == ()
    assert plan.fetchers == 2
    # A fetcher with work left keeps its slot...
    assert ask(plan, b"a", now=1.0, available=have({0}, 100), rate_bps=0.0) == (1,)
    assert ask(plan, b"c", now=1.0, available=have({0}, 100)) == ()
    # ...and once it has fetched everything, the slot is free for the next peer.
    done = have({0, 1}, 100)
    assert ask(plan, b"c", now=2.0, available=done) == (4, 5)
    assert ask(plan, b"a", now=2.0, available=done) == ()
    assert plan.fetchers == 2


def test_a_zero_budget_assigns_nothing() -> None:
    assert ask(planner(budget=0), b"a") == ()


def test_expired_assignment_goes_to_another_peer() -> None:
    plan = planner(budget=1)
    assert ask(plan, b"a") == (0, 1)
    assert ask(plan, b"b", now=TTL_S - 0.1) == ()
    assert ask(plan, b"b", now=TTL_S) == (0, 1)
    assert plan.fetchers == 1


def test_an_idle_fetcher_is_not_kept_alive_by_announcing() -> None:
    plan = planner(budget=1)
    ask(plan, b"a")
    for now in (5.0, 10.0, 15.0):
        assert ask(plan, b"a", now=now) == (0, 1)
    assert ask(plan, b"b", now=TTL_S) == (0, 1)


def test_progress_restarts_the_ttl() -> None:
    plan = planner(budget=1, max_pieces=2)
    ask(plan, b"a")
    # Piece 0 arrives at 15 s; nothing is left to top up with, yet the peer is working.
    rest = have(set(range(2, 100)), 100)
    assert ask(plan, b"a", now=15.0, available=rest | have({0}, 100)) == (1,)
    assert ask(plan, b"b", now=TTL_S + 1, available=rest | have({0}, 100)) == ()
    assert ask(plan, b"b", now=15.0 + TTL_S, available=rest | have({0}, 100)) == (1,)


def test_topping_up_restarts_the_ttl_of_the_whole_assignment() -> None:
    plan = planner(budget=1)
    assert ask(plan, b"a") == (0, 1)
    assert ask(plan, b"a", now=10.0, rate_bps=4 * PIECE / INTERVAL_S) == (0, 1, 2, 3)
    assert plan.expire(TTL_S + 5.0) == 0
    assert plan.expire(10.0 + TTL_S) == 4


def test_expire_returns_how_many_pieces_came_back() -> None:
    plan = planner()
    ask(plan, b"a")
    ask(plan, b"b", now=5.0, rate_bps=3 * PIECE / INTERVAL_S)
    assert plan.expire(TTL_S) == 2
    assert plan.fetchers == 1
    assert plan.expire(5.0 + TTL_S) == 3
    assert (plan.fetchers, plan.assigned_pieces) == (0, 0)


def test_release_frees_the_pieces_at_once() -> None:
    plan = planner(budget=1)
    ask(plan, b"a")
    plan.release(b"a")
    plan.release(b"never assigned")
    assert (plan.fetchers, plan.assigned_pieces) == (0, 0)
    assert ask(plan, b"b", now=0.1) == (0, 1)
    assert plan.assignment_of(b"b") == (0, 1)
    assert plan.assignment_of(b"a") == ()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_pieces": -1}, "num_pieces"),
        ({"budget": -1}, "budget"),
        ({"max_pieces": 0}, "max_pieces"),
        ({"ttl_s": 0.0}, "ttl_s"),
        ({"ttl_s": math.inf}, "ttl_s"),
    ],
)
def test_planner_rejects_invalid_settings(kwargs: dict[str, float], message: str) -> None:
    settings_: dict[str, float] = {"num_pieces": 10, "budget": 1, "max_pieces": 4, "ttl_s": 1.0}
    settings_.update(kwargs)
    with pytest.raises(ValueError, match=message):
        SourcePlanner(
            int(settings_["num_pieces"]),
            budget=int(settings_["budget"]),
            max_pieces=int(settings_["max_pieces"]),
            ttl_s=settings_["ttl_s"],
        )


def test_assign_rejects_a_non_positive_piece_length() -> None:
    with pytest.raises(ValueError, match="piece_length"):
        planner().assign(b"a", 0.0, 0, rate_bps=None, piece_length=0, interval_s=INTERVAL_S)


def test_large_task_assigns_from_the_first_gap() -> None:
    num_pieces = 1 << 20
    plan = planner(num_pieces)
    available = have(range(500_000), num_pieces)
    assert ask(plan, b"a", available=available) == (500_000, 500_001)
    assert ask(plan, b"b", available=available, rate_bps=1e12) == tuple(range(500_002, 500_018))
    assert plan.missing(available) == num_pieces - 500_018


# --- fair share and splitting ---------------------------------------------------------------


def fair_planner(num_pieces: int = 256, *, budget: int = 20) -> SourcePlanner:
    return SourcePlanner(
        num_pieces,
        budget=budget,
        max_pieces=num_pieces,
        ttl_s=TTL_S,
        fair_share=True,
        split_large=True,
    )


def ask_fair(
    plan: SourcePlanner,
    peer: bytes,
    contenders: int | None,
    now: float = 0.0,
    *,
    pieces_per_s: float | None = None,
) -> list[int]:
    return list(
        plan.assign(
            peer,
            now,
            0,
            rate_bps=None if pieces_per_s is None else pieces_per_s * PIECE,
            piece_length=PIECE,
            interval_s=INTERVAL_S,
            contenders=contenders,
        )
    )


def reach(pieces_per_s: float, since_s: float = 0.0) -> int:
    """What a fetcher keeps ``since_s`` after its last announce, at its rate."""
    ahead_s = since_s + INTERVAL_S + STEAL_INFLIGHT_S
    return math.ceil(STEAL_KEEP_MARGIN * pieces_per_s * ahead_s)


def test_a_first_announce_takes_its_share_over_the_budget_then_a_lone_fetcher_the_rest() -> None:
    """On a first announce (``contenders`` None) the first of a crowd takes its share over the
    budget's slots; announcing again, alone, it takes what is left."""
    plan = fair_planner(256, budget=20)
    assert ask_fair(plan, b"first", contenders=None) == list(range(13))  # ceil(256 / 20)
    assert ask_fair(plan, b"first", contenders=1) == list(range(256))


def test_a_fetcher_that_comes_back_takes_its_share_on_top_of_what_it_holds() -> None:
    """Ten peers arrive together and each takes a share over the budget; coming back with a
    rate, each takes what it holds plus a tenth of what is left: the first back does not
    take it all (with 2 pieces/s its rate alone would ask for only 2 * INTERVAL_S)."""
    plan = fair_planner(256, budget=20)
    for n in range(10):
        ask_fair(plan, f"peer{n}".encode(), contenders=None)
    assert plan.assigned_pieces == 10 * 13
    held = len(plan.assignment_of(b"peer0"))
    again = ask_fair(plan, b"peer0", contenders=10, pieces_per_s=2)
    assert len(again) == held + -(-(256 - 10 * 13) // 10)


def test_a_newcomer_takes_the_upper_half_of_what_a_slow_fetcher_cannot_reach() -> None:
    plan = fair_planner(256)
    ask_fair(plan, b"first", contenders=1)
    # Its second announce tells its rate: 2 pieces/s; alone, it takes the rest, and keeps what
    # it may reach before it hears of a split.
    assert ask_fair(plan, b"first", contenders=1, pieces_per_s=2) == list(range(256))
    spare = 256 - reach(2)
    assert ask_fair(plan, b"second", contenders=2) == list(range(255, 255 - spare // 2, -1))
    # The first fetcher's next announce names what is left to it.
    kept = 256 - spare // 2
    assert plan.assignment_of(b"first") == tuple(range(kept))
    assert plan.assigned_pieces == 256
    spare = kept - reach(2)
    assert ask_fair(plan, b"third", contenders=3) == list(
        range(kept - 1, kept - 1 - spare // 2, -1)
    )
    assert plan.missing(0) == 0


def test_the_longer_since_the_fetcher_announced_the_more_it_keeps() -> None:
    plan = fair_planner(256)
    ask_fair(plan, b"first", contenders=1)
    ask_fair(plan, b"first", contenders=1, now=1.0, pieces_per_s=2)
    spare = 256 - reach(2, since_s=3.0)
    assert ask_fair(plan, b"second", contenders=2, now=4.0) == list(
        range(255, 255 - spare // 2, -1)
    )


def test_a_split_part_is_fetched_towards_the_fetcher_that_keeps_the_rest() -> None:
    """The upper part of an ascending assignment comes highest first; splitting that one
    (descending) gives away its lower end, lowest first: each newcomer starts at the end
    farthest from where the other fetcher works."""
    plan = fair_planner(256)
    ask_fair(plan, b"first", contenders=1)
    ask_fair(plan, b"first", contenders=1, pieces_per_s=1)
    second = ask_fair(plan, b"second", contenders=2)
    assert second == sorted(second, reverse=True) and second[0] == 255
    ask_fair(plan, b"first", contenders=2, pieces_per_s=100)  # it keeps all that is left
    ask_fair(plan, b"second", contenders=2, pieces_per_s=1)
    third = ask_fair(plan, b"third", contenders=3)
    assert third == sorted(third) and third[0] == min(second)
    left = plan.assignment_of(b"second")
    assert left == tuple(sorted(left, reverse=True)) and left[0] == 255
    assert not set(third) & set(left)


def test_an_assignment_whose_fetcher_told_no_rate_yet_is_not_split() -> None:
    """On loopback a fetcher may be through the whole file before its second announce."""
    plan = fair_planner(256)
    assert ask_fair(plan, b"first", contenders=1) == list(range(256))
    assert ask_fair(plan, b"second", contenders=2) == []
    assert plan.assignment_of(b"first") == tuple(range(256))


def test_a_fetcher_fast_enough_to_finish_before_its_next_announce_keeps_everything() -> None:
    plan = fair_planner(256)
    ask_fair(plan, b"first", contenders=1)
    ask_fair(plan, b"first", contenders=1, pieces_per_s=256 / INTERVAL_S)
    assert ask_fair(plan, b"second", contenders=2) == []
    plan = fair_planner(256)
    ask_fair(plan, b"first", contenders=1)
    ask_fair(plan, b"first", contenders=1, pieces_per_s=math.inf)
    assert ask_fair(plan, b"second", contenders=2) == []


def test_a_spare_part_below_the_minimum_is_not_split() -> None:
    plan = fair_planner(reach(2) + 2 * STEAL_MIN_PIECES - 1)
    ask_fair(plan, b"first", contenders=1)
    ask_fair(plan, b"first", contenders=1, pieces_per_s=2)
    assert ask_fair(plan, b"second", contenders=2) == []
    assert plan.fetchers == 1
    plan = fair_planner(reach(2) + 2 * STEAL_MIN_PIECES)
    ask_fair(plan, b"first", contenders=1)
    ask_fair(plan, b"first", contenders=1, pieces_per_s=2)
    assert len(ask_fair(plan, b"second", contenders=2)) == STEAL_MIN_PIECES


def test_a_crowd_spreads_the_file_over_the_whole_budget_in_its_first_round() -> None:
    """200 peers arrive one after another, then everyone announces again, each fetcher telling
    its rate of 2 pieces/s, three times. The first round already splits the file over the
    whole budget of disjoint assignments, none below the minimum, and later rounds keep it."""
    pieces = 1024
    plan = fair_planner(pieces, budget=20)
    counts = []
    for round_ in range(4):
        for n in range(200):
            peer = f"peer{n}".encode()
            rate = 2.0 if plan.assignment_of(peer) else None
            first = round_ == 0  # a first announce: how many follow is unknown
            ask_fair(plan, peer, contenders=None if first else 200, pieces_per_s=rate)
        counts.append(plan.fetchers)
    parts = [plan.assignment_of(f"peer{n}".encode()) for n in range(200)]
    sizes = sorted(len(part) for part in parts if part)
    assert sorted(i for part in parts for i in part) == list(range(pieces))
    assert counts == [20, 20, 20, 20], counts
    assert sizes[0] >= STEAL_MIN_PIECES


def test_a_peer_that_holds_an_assignment_does_not_split_another() -> None:
    plan = fair_planner(256, budget=20)
    ask_fair(plan, b"first", contenders=1)
    ask_fair(plan, b"first", contenders=1, pieces_per_s=2)
    second = ask_fair(plan, b"second", contenders=2)
    before = plan.assignment_of(b"first")
    assert ask_fair(plan, b"second", contenders=2) == second
    assert plan.assignment_of(b"first") == before


def test_no_split_unless_asked() -> None:
    plan = SourcePlanner(256, budget=20, max_pieces=256, ttl_s=TTL_S, fair_share=True)
    ask_fair(plan, b"first", contenders=1)
    ask_fair(plan, b"first", contenders=1, pieces_per_s=2)
    assert ask_fair(plan, b"second", contenders=2) == []


def test_splitting_respects_the_budget() -> None:
    plan = fair_planner(256, budget=1)
    ask_fair(plan, b"first", contenders=1)
    ask_fair(plan, b"first", contenders=1, pieces_per_s=2)
    assert ask_fair(plan, b"second", contenders=2) == []
    assert plan.assignment_of(b"first") == tuple(range(256))


# --- simulation ---------------------------------------------------------------------------------


def test_simulated_swarm_fetches_each_piece_from_the_origin_once() -> None:
    """Four peers announce every interval; one stalls and never fetches what it is given.

    Workers fetch their assignment in one interval and then trade pieces; the stalled peer's
    pieces are taken back after the ttl and fetched by someone else. The origin sends each
    piece exactly once and everyone finishes.
    """
    num_pieces = 60
    plan = planner(num_pieces, budget=3, max_pieces=4)
    peers = [b"w1", b"w2", b"w3", b"stall"]
    held: dict[bytes, set[int]] = {peer: set() for peer in peers}
    origin_fetches = [0] * num_pieces
    rate = 4 * PIECE / INTERVAL_S
    now = 0.0
    for _ in range(200):
        union = set().union(*held.values())
        if all(len(pieces) == num_pieces for pieces in held.values()):
            break
        available = have(union, num_pieces)
        work = {peer: ask(plan, peer, now, available, rate) for peer in peers}
        assigned = [i for pieces in work.values() for i in pieces]
        assert len(assigned) == len(set(assigned)), "assignments overlap"
        assert not set(assigned) & union, "an available piece was assigned"
        assert sum(1 for pieces in work.values() if pieces) <= 3
        for peer in peers:
            if peer != b"stall":
                for i in work[peer]:
                    origin_fetches[i] += 1
                    held[peer].add(i)
        for pieces in held.values():  # one round of trading: everyone gets what existed before
            pieces |= union
        now += INTERVAL_S
    else:
        pytest.fail("the swarm never finished")
    assert origin_fetches == [1] * num_pieces
    assert plan.missing(full_mask(num_pieces)) == 0


class PlannerMachine(RuleBasedStateMachine):
    """Random announces, fetches, departures and clock steps; the invariants always hold."""

    NUM_PIECES = 37
    PEERS = (b"p0", b"p1", b"p2", b"p3", b"p4")

    def __init__(self) -> None:
        super().__init__()
        self.plan = SourcePlanner(self.NUM_PIECES, budget=3, max_pieces=5, ttl_s=TTL_S)
        self.available: set[int] = set()
        self.now = 0.0

    def mask(self) -> int:
        return have(self.available, self.NUM_PIECES)

    @rule(
        peer=st.sampled_from(PEERS),
        rate_pieces=st.one_of(st.none(), st.integers(0, 8)),
    )
    def announce(self, peer: bytes, rate_pieces: int | None) -> None:
        rate = None if rate_pieces is None else rate_pieces * PIECE / INTERVAL_S
        got = ask(self.plan, peer, self.now, self.mask(), rate)
        # In the order to fetch: ascending, or descending for the upper part of a split
        # (FairPlannerMachine); no piece twice.
        assert list(got) in (sorted(set(got)), sorted(set(got), reverse=True))
        assert len(got) <= self.plan.max_pieces
        assert not set(got) & self.available
        if not got:
            # Refused only when the budget is spent or there is nothing left to hand out.
            assert self.plan.fetchers >= 3 or self.plan.missing(self.mask()) == 0

    @rule(peer=st.sampled_from(PEERS), data=st.data())
    def fetch_some(self, peer: bytes, data: st.DataObject) -> None:
        work = self.plan.assignment_of(peer)
        if work:
            self.available |= set(data.draw(st.sets(st.sampled_from(work))))

    @rule(peer=st.sampled_from(PEERS))
    def leave(self, peer: bytes) -> None:
        self.plan.release(peer)
        assert self.plan.assignment_of(peer) == ()

    @rule(step_s=st.sampled_from([0.5, 5.0, TTL_S / 2, TTL_S]))
    def wait(self, step_s: float) -> None:
        self.now += step_s

    @precondition(lambda self: self.now > 0)
    @rule()
    def expire(self) -> None:
        before = self.plan.assigned_pieces
        released = self.plan.expire(self.now)
        assert self.plan.assigned_pieces == before - released

    @invariant()
    def assignments_are_disjoint_and_counted(self) -> None:
        seen: list[int] = []
        for peer in self.PEERS:
            seen.extend(self.plan.assignment_of(peer))
        assert len(seen) == len(set(seen))
        assert len(seen) == self.plan.assigned_pieces
        assert self.plan.fetchers == sum(1 for p in self.PEERS if self.plan.assignment_of(p))
        assert self.plan.fetchers <= 3
        missing = self.plan.missing(0)
        assert missing == self.NUM_PIECES - len(seen)


PlannerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40)
test_planner_state_machine = PlannerMachine.TestCase


class FairPlannerMachine(PlannerMachine):
    """The same, with fair shares and splitting of large assignments (as the tracker runs it)."""

    NUM_PIECES = 2 * STEAL_MIN_PIECES + 5

    def __init__(self) -> None:
        super().__init__()
        self.plan = SourcePlanner(
            self.NUM_PIECES,
            budget=3,
            max_pieces=self.NUM_PIECES,
            ttl_s=TTL_S,
            fair_share=True,
            split_large=True,
        )

    @rule(
        peer=st.sampled_from(PlannerMachine.PEERS),
        contenders=st.integers(1, 5),
        pieces_per_s=st.none() | st.sampled_from([0.0, 0.5, 1.0, 4.0, math.inf]),
    )
    def announce_in_a_crowd(self, peer: bytes, contenders: int, pieces_per_s: float | None) -> None:
        got = self.plan.assign(
            peer,
            self.now,
            self.mask(),
            rate_bps=None if pieces_per_s is None else pieces_per_s * PIECE,
            piece_length=PIECE,
            interval_s=INTERVAL_S,
            contenders=contenders,
        )
        # In the order to fetch: ascending, or descending for the upper part of a split.
        assert list(got) in (sorted(set(got)), sorted(set(got), reverse=True))
        assert not set(got) & self.available


FairPlannerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40)
test_fair_planner_state_machine = FairPlannerMachine.TestCase
