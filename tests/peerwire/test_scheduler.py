from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerwire.bitfield import Bitfield
from peerwire.layout import Block, PieceLayout
from peerwire.scheduler import ENDGAME_RESCAN_S, OVERDUE_FACTOR, BlockOutcome, Scheduler

PIECE = 64
BLOCK = 16  # four blocks per piece


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def make(
    num_pieces: int = 6,
    *,
    have: tuple[int, ...] = (),
    depth: int = 4,
    timeout_s: float = 5.0,
    seed: int = 0,
    random_first_pieces: int = 0,
    policy: str = "rarest_first",
    endgame_copies: int = 2,
    endgame_patience_s: float = 0.0,
    expected_wait: Callable[[str], float | None] | None = None,
) -> tuple[Scheduler[str], FakeClock]:
    clock = FakeClock()
    have_bits = bits(num_pieces, list(have))
    scheduler: Scheduler[str] = Scheduler(
        PieceLayout(num_pieces * PIECE, PIECE),
        have_bits,
        block_bytes=BLOCK,
        pipeline_depth=depth,
        request_timeout_s=timeout_s,
        clock=clock,
        rng=random.Random(seed),
        random_first_pieces=random_first_pieces,
        policy=policy,
        endgame_copies=endgame_copies,
        endgame_patience_s=endgame_patience_s,
        expected_wait=expected_wait,
    )
    return scheduler, clock


def bits(num_pieces: int, pieces: list[int]) -> Bitfield:
    bitfield = Bitfield(num_pieces)
    for index in pieces:
        bitfield.add(index)
    return bitfield


def join(scheduler: Scheduler[str], peer: str, pieces: list[int] | None = None) -> None:
    """``pieces=None`` is a seed (BEP 6 have all)."""
    scheduler.peer_joined(peer)
    if pieces is None:
        scheduler.peer_have_all(peer)
    else:
        scheduler.peer_bitfield(peer, bits(scheduler.have.num_pieces, pieces))


def deliver(scheduler: Scheduler[str], peer: str, block: Block) -> BlockOutcome[str] | None:
    """Claim and receive ``block``; None when the scheduler does not want it."""
    if not scheduler.claim_block(peer, block):
        return None
    return scheduler.block_received(peer, block)


def piece_blocks(index: int) -> list[Block]:
    return [Block(index, begin, BLOCK) for begin in range(0, PIECE, BLOCK)]


# -- selection -----------------------------------------------------------------------------


def test_scheduler_prefers_rarest_piece() -> None:
    scheduler, _ = make()
    join(scheduler, "seed")
    join(scheduler, "a", [0, 1, 2, 4, 5])
    join(scheduler, "b", [0, 1, 2, 4, 5])
    # piece 3 only at the seed
    assert {block.index for block in scheduler.next_requests("seed")} == {3}


def test_random_first_piece_varies_with_seed_and_is_reproducible() -> None:
    def first_piece(seed: int) -> int:
        scheduler, _ = make(num_pieces=16, seed=seed, random_first_pieces=4)
        join(scheduler, "seed")
        join(scheduler, "a", list(range(1, 16)))  # piece 0 is rarest
        return scheduler.next_requests("seed", max_blocks=1)[0].index

    firsts = [first_piece(seed) for seed in range(12)]
    assert firsts == [first_piece(seed) for seed in range(12)]
    assert len(set(firsts)) > 1
    assert set(firsts) != {0}


def test_started_piece_has_strict_priority() -> None:
    scheduler, _ = make(depth=2)
    join(scheduler, "seed")
    join(scheduler, "other", [0, 1, 2, 3, 4])  # piece 5 is rarest: the seed starts it
    started = scheduler.next_requests("seed")
    assert started == piece_blocks(5)[:2]
    join(scheduler, "late", [0, 1, 2, 3, 4, 5])
    # "late" has rarer pieces than 5? no: but 5 is started, so it comes first regardless
    assert scheduler.next_requests("late") == piece_blocks(5)[2:]


def test_started_piece_wins_over_a_rarer_unstarted_piece() -> None:
    scheduler, _ = make(depth=1)
    join(scheduler, "a", [0])
    assert scheduler.next_requests("a") == [piece_blocks(0)[0]]
    join(scheduler, "b", [0, 1])  # piece 1 is now as rare as 0, but 0 is started
    join(scheduler, "c", [0])  # and now 1 is rarer
    assert scheduler.next_requests("b") == [piece_blocks(0)[1]]


def test_pipeline_depth_respected() -> None:
    scheduler, _ = make(depth=3)
    join(scheduler, "seed")
    first = scheduler.next_requests("seed")
    assert len(first) == 3
    assert scheduler.inflight("seed") == 3
    assert scheduler.next_requests("seed") == []
    assert deliver(scheduler, "seed", first[0]) is not None
    assert len(scheduler.next_requests("seed")) == 1
    assert scheduler.next_requests("seed", max_blocks=0) == []


def test_max_blocks_limits_one_call() -> None:
    scheduler, _ = make(depth=8)
    join(scheduler, "seed")
    assert len(scheduler.next_requests("seed", max_blocks=2)) == 2
    assert len(scheduler.next_requests("seed")) == 6


def test_pieces_we_have_or_the_peer_lacks_are_never_requested() -> None:
    scheduler, _ = make(have=(0, 1, 2))
    join(scheduler, "a", [1, 2, 3])
    requested = scheduler.next_requests("a")
    assert {block.index for block in requested} == {3}
    assert scheduler.missing_count() == 3


def test_interest_follows_pieces_we_lack() -> None:
    scheduler, _ = make(num_pieces=3, have=(0,))
    join(scheduler, "a", [0])
    assert not scheduler.is_interesting("a")
    assert scheduler.next_requests("a") == []
    scheduler.peer_have("a", 2)
    assert scheduler.is_interesting("a")
    scheduler.piece_verified(2)
    assert not scheduler.is_interesting("a")


# -- arrivals, timeouts, failures ----------------------------------------------------------


def test_unsolicited_block_is_not_claimed() -> None:
    scheduler, _ = make()
    join(scheduler, "a")
    join(scheduler, "b")
    block = scheduler.next_requests("a", max_blocks=1)[0]
    assert not scheduler.claim_block("b", block)
    assert not scheduler.claim_block("nobody", block)
    assert scheduler.claim_block("a", block)


def test_block_received_without_claim_is_an_error() -> None:
    scheduler, _ = make()
    join(scheduler, "a")
    block = scheduler.next_requests("a", max_blocks=1)[0]
    with pytest.raises(ValueError, match="not claimed"):
        scheduler.block_received("a", block)


def test_timeout_re_requests_from_another_peer() -> None:
    scheduler, clock = make(num_pieces=1, depth=1, timeout_s=5.0)
    join(scheduler, "slow")
    join(scheduler, "fast")
    block = scheduler.next_requests("slow")[0]
    clock.now_s += 4.9
    assert scheduler.expire() == []
    clock.now_s += 0.1
    assert scheduler.expire() == [("slow", block)]
    assert scheduler.inflight("slow") == 0
    assert scheduler.next_requests("slow") == [piece_blocks(0)[1]]  # not the expired one
    assert scheduler.next_requests("fast") == [block]


def test_late_answer_after_timeout_is_still_accepted_when_needed() -> None:
    scheduler, clock = make(num_pieces=1, depth=1)
    join(scheduler, "slow")
    block = scheduler.next_requests("slow")[0]
    clock.now_s += 10
    scheduler.expire()
    assert scheduler.claim_block("slow", block)


def test_endgame_duplicates_and_cancels_on_arrival() -> None:
    scheduler, _ = make(num_pieces=1, depth=4, endgame_copies=2)
    for peer in ("a", "b", "c"):
        join(scheduler, peer)
    blocks = scheduler.next_requests("a")
    assert blocks == piece_blocks(0)
    assert scheduler.in_endgame
    duplicates = scheduler.next_requests("b")
    assert sorted(duplicates) == blocks
    assert scheduler.next_requests("c") == []  # every block already has two copies
    assert scheduler.next_requests("a") == []  # never twice the same block at one peer
    outcome = deliver(scheduler, "b", blocks[0])
    assert outcome is not None
    assert outcome.cancels == (("a", blocks[0]),)
    assert not scheduler.claim_block("a", blocks[0])  # cancelled, but it came anyway: drop it


def test_endgame_duplicates_only_requests_older_than_its_patience() -> None:
    scheduler, clock = make(num_pieces=1, depth=4, endgame_copies=2, endgame_patience_s=3.0)
    for peer in ("a", "b", "c"):
        join(scheduler, peer)
    early = scheduler.next_requests("a", max_blocks=2)
    clock.now_s += 2.0
    late = scheduler.next_requests("b", max_blocks=2)
    assert scheduler.in_endgame
    assert scheduler.next_requests("c") == []  # asked 2 s and 0 s ago: their normal wait
    clock.now_s += 1.0
    assert sorted(scheduler.next_requests("c")) == sorted(early)  # 3 s old now
    clock.now_s += 3.0
    assert sorted(scheduler.next_requests("a")) == sorted(late)


def test_endgame_patience_is_counted_from_the_first_request_still_in_flight() -> None:
    scheduler, clock = make(num_pieces=1, depth=4, endgame_copies=3, endgame_patience_s=3.0)
    for peer in ("a", "b", "c"):
        join(scheduler, peer)
    blocks = scheduler.next_requests("a")
    clock.now_s += 3.0
    assert sorted(scheduler.next_requests("b")) == blocks
    scheduler.request_rejected("a", blocks[0])  # the old request is gone; b's is 0 s old
    assert sorted(scheduler.next_requests("c")) == sorted(blocks)[1:]


def test_a_block_is_duplicated_sooner_when_its_holder_is_fast() -> None:
    """OVERDUE_FACTOR x what the holder should take for all it was asked for "fast" (0.1 s),
    the fixed patience for "new" (not known), and never later than the fixed patience for
    "slow"."""
    waits = {"fast": 0.1, "new": None, "slow": 60.0}
    scheduler, clock = make(
        num_pieces=1, depth=4, endgame_copies=2, endgame_patience_s=3.0, expected_wait=waits.get
    )
    for peer in ("fast", "new", "slow", "d"):
        join(scheduler, peer)
    asked_s = clock.now_s
    at_fast = scheduler.next_requests("fast", max_blocks=2)
    at_new = scheduler.next_requests("new", max_blocks=1)
    at_slow = scheduler.next_requests("slow", max_blocks=1)
    overdue_s = OVERDUE_FACTOR * 0.1
    assert overdue_s < 2.0  # the test needs "fast" well before the 3 s cap
    clock.now_s += overdue_s - 0.05
    assert scheduler.next_requests("d") == []  # nothing overdue yet
    clock.now_s += 0.1
    assert sorted(scheduler.next_requests("d")) == sorted(at_fast)  # past OVERDUE_FACTOR x 0.1 s
    clock.now_s = asked_s + 3.0
    assert sorted(scheduler.next_requests("d")) == sorted(at_new + at_slow)  # 3 s: the cap


def test_an_endgame_scan_that_found_nothing_waits_for_the_first_block_to_fall_due() -> None:
    """A peer asked again before anything can be duplicated for it is not rescanned (counted
    through ``expected_wait``, which each scan asks of every candidate's holder), and the block
    is still given the moment it falls due."""
    asked: list[str] = []

    def wait(holder: str) -> float | None:
        asked.append(holder)
        return None  # no rate: the fixed patience

    scheduler, clock = make(
        num_pieces=1, depth=4, endgame_copies=2, endgame_patience_s=3.0, expected_wait=wait
    )
    join(scheduler, "a")
    join(scheduler, "b")
    asked_s = clock.now_s
    blocks = scheduler.next_requests("a")
    assert scheduler.in_endgame
    clock.now_s = asked_s + 2.875
    assert scheduler.next_requests("b") == []
    scans = len(asked)
    assert scans == len(blocks)  # one look at each block's holder
    clock.now_s = asked_s + 2.9375
    assert scheduler.next_requests("b") == []  # not due before 3.0 s: no rescan
    assert len(asked) == scans
    clock.now_s = asked_s + 3.0
    assert sorted(scheduler.next_requests("b")) == blocks  # due now: rescanned, duplicated


def test_an_endgame_scan_is_repeated_after_a_quarter_second_for_changed_rates() -> None:
    """The time a block falls due moves with its holder's rate: a scan is trusted for
    ``ENDGAME_RESCAN_S`` at most."""
    waits: dict[str, float | None] = {"a": None}
    scheduler, clock = make(
        num_pieces=1, depth=4, endgame_copies=2, endgame_patience_s=30.0, expected_wait=waits.get
    )
    join(scheduler, "a")
    join(scheduler, "b")
    blocks = scheduler.next_requests("a")
    clock.now_s += 1.0
    assert scheduler.next_requests("b") == []  # 30 s of patience without a rate
    waits["a"] = 0.1  # a rate now: overdue after OVERDUE_FACTOR x 0.1 s, long past
    assert scheduler.next_requests("b") == []  # the last scan still holds
    clock.now_s += ENDGAME_RESCAN_S
    assert sorted(scheduler.next_requests("b")) == blocks


def test_news_of_a_piece_from_a_peer_rescans_at_once() -> None:
    scheduler, clock = make(num_pieces=2, depth=8, endgame_copies=2, endgame_patience_s=1.0)
    join(scheduler, "a")
    join(scheduler, "b", [0])
    at_a = scheduler.next_requests("a")
    assert sorted(at_a) == piece_blocks(0) + piece_blocks(1)
    assert scheduler.in_endgame
    clock.now_s += 1.0  # every request is due
    assert sorted(scheduler.next_requests("b")) == piece_blocks(0)  # b lacks piece 1
    assert scheduler.next_requests("b") == []
    assert scheduler.peer_have("b", 1)  # news of a piece we lack
    assert sorted(scheduler.next_requests("b")) == piece_blocks(1)  # at once, same instant
    assert not scheduler.peer_have("b", 1)  # not news twice


def test_peer_have_says_whether_the_peer_became_more_interesting() -> None:
    scheduler, _ = make(num_pieces=3, have=(0,))
    join(scheduler, "a", [])
    assert not scheduler.peer_have("a", 0)  # a piece we have
    assert not scheduler.is_interesting("a")
    assert scheduler.peer_have("a", 1)
    assert scheduler.is_interesting("a")
    assert not scheduler.peer_have("a", 1)  # already known


def test_negative_endgame_patience_is_refused() -> None:
    with pytest.raises(ValueError, match="endgame_patience_s"):
        make(endgame_patience_s=-1.0)


def test_endgame_prefers_blocks_with_fewest_copies() -> None:
    scheduler, _ = make(num_pieces=1, depth=2, endgame_copies=3)
    for peer in ("a", "b", "c", "d"):
        join(scheduler, peer)
    first = scheduler.next_requests("a")
    second = scheduler.next_requests("b")
    assert first + second == piece_blocks(0)
    duplicated = scheduler.next_requests("c")  # one copy each: takes two of them
    assert len(duplicated) == 2
    rest = set(piece_blocks(0)) - set(duplicated)
    assert set(scheduler.next_requests("d")) == rest


def test_block_being_received_elsewhere_is_not_claimed_twice() -> None:
    scheduler, _ = make(num_pieces=1, depth=4)
    join(scheduler, "a")
    join(scheduler, "b")
    blocks = scheduler.next_requests("a")
    scheduler.next_requests("b")
    assert scheduler.claim_block("a", blocks[0])
    assert not scheduler.claim_block("b", blocks[0])
    scheduler.block_aborted("a", blocks[0])
    # nobody has it in flight any more: requestable again
    assert blocks[0] in scheduler.next_requests("b") or blocks[0] in scheduler.next_requests("a")


def test_peer_leaving_frees_its_blocks() -> None:
    scheduler, _ = make(num_pieces=1, depth=4)
    join(scheduler, "a")
    join(scheduler, "b", [])
    blocks = scheduler.next_requests("a")
    assert scheduler.claim_block("a", blocks[0])  # mid-payload when it leaves
    scheduler.peer_left("a")
    assert not scheduler.in_endgame
    scheduler.peer_have("b", 0)
    assert sorted(scheduler.next_requests("b")) == blocks


def test_choke_voids_requests_but_accepts_a_racing_block() -> None:
    scheduler, _ = make(num_pieces=1, depth=4)
    join(scheduler, "a")
    join(scheduler, "b")
    blocks = scheduler.next_requests("a")
    scheduler.peer_choked("a")
    assert scheduler.inflight("a") == 0
    assert scheduler.next_requests("b", max_blocks=1) == [blocks[0]]
    assert scheduler.claim_block("a", blocks[1])  # was on the wire before the choke


def test_rejected_block_goes_to_another_peer_not_back_to_the_rejecter() -> None:
    scheduler, clock = make(num_pieces=1, depth=1, timeout_s=5.0)
    join(scheduler, "a")
    join(scheduler, "b")
    block = scheduler.next_requests("a")[0]
    scheduler.request_rejected("a", block)
    assert scheduler.next_requests("a") == [piece_blocks(0)[1]]
    assert scheduler.next_requests("b") == [block]
    scheduler.request_rejected("a", Block(0, 999, 1))  # unknown: ignored
    clock.now_s += 5
    scheduler.request_rejected("b", block)
    scheduler.claim_block("a", piece_blocks(0)[1])
    assert scheduler.next_requests("a") == [block]  # its cool-down is over


def test_endgame_does_not_duplicate_a_block_to_the_peer_that_rejected_it() -> None:
    scheduler, _ = make(num_pieces=1, depth=4)
    join(scheduler, "a")
    join(scheduler, "b")
    blocks = scheduler.next_requests("a")
    scheduler.request_rejected("a", blocks[0])
    assert scheduler.next_requests("b") == blocks  # the open one first, then duplicates
    assert scheduler.in_endgame
    assert scheduler.next_requests("a") == []


def test_piece_failed_makes_blocks_requestable_and_returns_contributors() -> None:
    scheduler, _ = make(num_pieces=1, depth=2)
    join(scheduler, "a")
    join(scheduler, "b")
    outcomes: list[bool] = []
    for peer in ("a", "b"):
        for block in scheduler.next_requests(peer):
            outcome = deliver(scheduler, peer, block)
            assert outcome is not None
            outcomes.append(outcome.piece_complete)
    assert outcomes == [False, False, False, True]
    assert scheduler.next_requests("a") == []
    assert scheduler.piece_failed(0) == {"a", "b"}
    scheduler.ban("b")
    assert sorted(scheduler.next_requests("a")) == piece_blocks(0)[:2]
    assert scheduler.next_requests("b") == []


def test_banned_peer_gets_no_requests_and_its_blocks_are_refused() -> None:
    scheduler, _ = make(depth=2)
    join(scheduler, "bad")
    join(scheduler, "good")
    blocks = scheduler.next_requests("bad")
    scheduler.ban("bad")
    assert scheduler.next_requests("bad") == []
    assert not scheduler.is_interesting("bad")
    assert not scheduler.claim_block("bad", blocks[0])
    assert scheduler.inflight("bad") == 0
    assert sorted(scheduler.next_requests("good")) == blocks


def test_ban_reopens_blocks_the_peer_delivered_to_unfinished_pieces() -> None:
    scheduler, _ = make(num_pieces=1, depth=2)
    join(scheduler, "bad")
    join(scheduler, "good")
    first = scheduler.next_requests("bad")
    assert deliver(scheduler, "bad", first[0]) is not None
    scheduler.ban("bad")
    requested = scheduler.next_requests("good")
    assert first[0] in requested  # the banned peer's block is fetched again
    for block in requested:
        outcome = deliver(scheduler, "good", block)
        assert outcome is not None
    assert scheduler.next_requests("good")  # the rest of the piece is still to come
    assert scheduler.piece_failed(0) == {"good"}  # "bad" is no longer among the suppliers


def test_piece_verified_elsewhere_cancels_its_requests() -> None:
    scheduler, _ = make(num_pieces=2, depth=8)
    join(scheduler, "a", [0])
    blocks = scheduler.next_requests("a")
    assert scheduler.claim_block("a", blocks[0])
    cancels = scheduler.piece_verified(0)  # e.g. fetched from the origin
    assert cancels == [("a", block) for block in blocks[1:]]
    assert scheduler.inflight("a") == 0
    assert scheduler.block_received("a", blocks[0]).piece_complete is False
    assert not scheduler.is_interesting("a")
    assert scheduler.piece_verified(0) == []


def test_piece_verified_before_it_was_started_is_never_requested() -> None:
    scheduler, _ = make(num_pieces=2)
    scheduler.piece_verified(1)
    join(scheduler, "a", [1])
    assert not scheduler.is_interesting("a")
    scheduler.peer_have("a", 0)
    assert {block.index for block in scheduler.next_requests("a")} == {0}
    assert scheduler.in_endgame


def test_completion_and_have_updates() -> None:
    scheduler, _ = make(num_pieces=2, have=(1,))
    assert not scheduler.is_complete()
    scheduler.piece_verified(0)
    assert scheduler.is_complete()
    assert scheduler.missing_count() == 0
    assert not scheduler.in_endgame
    with pytest.raises(ValueError, match="already verified"):
        scheduler.piece_failed(0)


def test_unknown_peer_and_wrong_bitfield_size_are_errors() -> None:
    scheduler, _ = make()
    with pytest.raises(KeyError, match="unknown peer"):
        scheduler.next_requests("ghost")
    scheduler.peer_joined("a")
    with pytest.raises(ValueError, match="joined twice"):
        scheduler.peer_joined("a")
    with pytest.raises(ValueError, match="pieces"):
        scheduler.peer_bitfield("a", Bitfield(7))
    with pytest.raises(IndexError):
        scheduler.peer_have("a", 6)


# -- randomized swarm simulation -----------------------------------------------------------


class SimPeer:
    def __init__(
        self, name: str, pieces: set[int], hidden: set[int], corrupt: bool, speed: float
    ) -> None:
        self.name = name
        self.speed = speed  # chance that it answers when asked to deliver
        self.pieces = pieces  # announced
        self.hidden = hidden  # announced later with ``have``
        self.corrupt = corrupt
        self.connected = True
        self.choked = False
        self.wire: list[Block] = []  # requests it holds and has not answered


class Swarm:
    """Fake peers with random pieces, random delivery order, losses, chokes, churn, bad data.

    Mirrors what the scheduler should believe is in flight and checks it after every step.
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        total_length: int,
        piece_length: int,
        num_peers: int,
        num_corrupt: int,
        depth: int,
        endgame_copies: int,
    ) -> None:
        self.rng = rng
        self.layout = PieceLayout(total_length, piece_length)
        n = self.layout.num_pieces
        have = Bitfield(n)
        for index in range(n):
            if rng.random() < 0.2:
                have.add(index)
        self.clock = FakeClock()
        self.depth = depth
        self.endgame_copies = endgame_copies
        self.scheduler: Scheduler[str] = Scheduler(
            self.layout,
            have,
            block_bytes=BLOCK,
            pipeline_depth=depth,
            request_timeout_s=5.0,
            clock=self.clock,
            rng=random.Random(rng.random()),
            random_first_pieces=2,
            policy=rng.choice(["rarest_first", "random", "sequential"]),
            endgame_copies=endgame_copies,
        )
        self.peers: dict[str, SimPeer] = {}
        for i in range(num_peers):
            owned = {index for index in range(n) if rng.random() < 0.5}
            hidden = {index for index in owned if rng.random() < 0.2}
            corrupt = i < num_corrupt
            speed = rng.choice([0.02, 0.3, 1.0])
            self.peers[f"p{i}"] = SimPeer(f"p{i}", owned - hidden, hidden, corrupt, speed)
        honest = [peer for peer in self.peers.values() if not peer.corrupt]
        for index in have.missing():  # every missing piece exists at some honest peer
            if not any(index in p.pieces or index in p.hidden for p in honest):
                rng.choice(honest).pieces.add(index)
        self.outstanding: dict[str, set[Block]] = {name: set() for name in self.peers}
        self.buffer: dict[int, dict[Block, str]] = {}
        self.banned: set[str] = set()
        for peer in self.peers.values():
            self.connect(peer)

    def connect(self, peer: SimPeer) -> None:
        peer.connected = True
        self.scheduler.peer_joined(peer.name)
        if len(peer.pieces) == self.layout.num_pieces and self.rng.random() < 0.5:
            self.scheduler.peer_have_all(peer.name)
        else:
            bitfield = Bitfield(self.layout.num_pieces)
            for index in peer.pieces:
                bitfield.add(index)
            self.scheduler.peer_bitfield(peer.name, bitfield)

    def forget(self, peer: str, block: Block) -> None:
        self.outstanding[peer].discard(block)

    def step(self, calm: bool) -> None:
        rng, s = self.rng, self.scheduler
        peer = rng.choice(list(self.peers.values()))
        action = rng.random()
        if action < 0.3:
            self.request(peer)
        elif action < 0.75:
            self.deliver(peer)
        elif action < 0.8 or (calm and action < 0.85):
            self.clock.now_s += rng.uniform(0, 3)
            for name, block in s.expire():
                assert block in self.outstanding[name]
                self.forget(name, block)
        elif calm:
            return
        elif action < 0.84 and peer.connected:
            peer.choked = not peer.choked
            if peer.choked:
                s.peer_choked(peer.name)  # BEP 3: it drops our requests...
                self.outstanding[peer.name].clear()
                peer.wire = peer.wire[: rng.randint(0, len(peer.wire))]  # ...but some race
        elif action < 0.88:
            if peer.connected:
                s.peer_left(peer.name)
                self.outstanding[peer.name].clear()
                peer.wire.clear()
                peer.connected = peer.choked = False
            else:
                self.connect(peer)
        elif action < 0.92 and peer.connected and peer.hidden:
            index = peer.hidden.pop()
            peer.pieces.add(index)
            s.peer_have(peer.name, index)
        elif action < 0.95 and peer.connected and peer.wire:
            block = peer.wire.pop(rng.randrange(len(peer.wire)))
            s.request_rejected(peer.name, block)  # BEP 6
            self.forget(peer.name, block)
        elif action < 0.96 and s.missing_count():
            index = rng.choice(list(s.have.missing()))  # fetched from the origin
            self.buffer.pop(index, None)
            for name, block in s.piece_verified(index):
                assert block.index == index
                self.forget(name, block)

    def request(self, peer: SimPeer) -> None:
        if not peer.connected or peer.choked:
            return
        blocks = self.scheduler.next_requests(peer.name)
        mine = self.outstanding[peer.name]
        if peer.name in self.banned:
            assert blocks == []
        assert len(set(blocks)) == len(blocks)
        for block in blocks:
            assert block.index not in self.scheduler.have, "requested a piece we have"
            assert block.index in peer.pieces, "requested a piece the peer lacks"
            assert self.layout.contains(block)
            assert block not in mine, "same block twice at one peer"
            mine.add(block)
            copies = sum(block in blocks for blocks in self.outstanding.values())
            assert copies <= self.endgame_copies
        assert len(mine) <= self.depth
        peer.wire.extend(blocks)

    def deliver(self, peer: SimPeer) -> None:
        rng, s = self.rng, self.scheduler
        if not peer.connected or not peer.wire or rng.random() > peer.speed:
            return
        block = peer.wire.pop(rng.randrange(len(peer.wire)))
        self.forget(peer.name, block)
        if not s.claim_block(peer.name, block):
            return
        assert peer.name not in self.banned
        if rng.random() < 0.05:
            s.block_aborted(peer.name, block)
            return
        outcome = s.block_received(peer.name, block)
        received = self.buffer.setdefault(block.index, {})
        assert block not in received, "a block was written into the piece buffer twice"
        received[block] = peer.name
        for other, cancelled in outcome.cancels:
            self.forget(other, cancelled)
            if rng.random() < 0.7 and cancelled in self.peers[other].wire:
                self.peers[other].wire.remove(cancelled)
        if not outcome.piece_complete:
            return
        assert set(received) == set(self.layout.blocks(block.index, BLOCK))
        suppliers = set(received.values())
        del self.buffer[block.index]
        if any(self.peers[name].corrupt for name in suppliers):
            assert s.piece_failed(block.index) == suppliers
            for name in suppliers:
                if self.peers[name].corrupt:
                    s.ban(name)
                    self.banned.add(name)
                    self.outstanding[name].clear()
                    # A ban drops what the peer delivered to pieces still being collected.
                    for index, blocks in self.buffer.items():
                        if len(blocks) < len(self.layout.blocks(index, BLOCK)):
                            for dropped in [b for b, who in blocks.items() if who == name]:
                                del blocks[dropped]
        else:
            assert s.piece_verified(block.index) == []

    def check(self) -> None:
        for name, peer in self.peers.items():
            if peer.connected:
                assert self.scheduler.inflight(name) == len(self.outstanding[name])

    def calm_down(self) -> None:
        """Everyone honest back online, unchoked, with every piece announced."""
        for peer in self.peers.values():
            if not peer.connected:
                self.connect(peer)
            peer.choked = False
            peer.speed = max(peer.speed, 0.1)
            while peer.hidden:
                index = peer.hidden.pop()
                peer.pieces.add(index)
                self.scheduler.peer_have(peer.name, index)


def run_swarm(seed: int, **params: int) -> None:
    swarm = Swarm(random.Random(seed), **params)
    for _ in range(400):
        swarm.step(calm=False)
        swarm.check()
    swarm.calm_down()
    for _ in range(20_000):
        if swarm.scheduler.is_complete():
            break
        swarm.step(calm=True)
        swarm.check()
    assert swarm.scheduler.is_complete()
    assert not swarm.scheduler.in_endgame


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    total_length=st.integers(1, 700),
    piece_length=st.sampled_from([16, 40, 64]),
    num_peers=st.integers(1, 5),
    num_corrupt=st.integers(0, 2),
    depth=st.integers(1, 4),
    endgame_copies=st.integers(1, 3),
)
def test_random_swarm_always_completes_without_duplicate_or_useless_requests(
    seed: int,
    total_length: int,
    piece_length: int,
    num_peers: int,
    num_corrupt: int,
    depth: int,
    endgame_copies: int,
) -> None:
    run_swarm(
        seed,
        total_length=total_length,
        piece_length=piece_length,
        num_peers=num_peers,
        num_corrupt=min(num_corrupt, num_peers - 1),
        depth=depth,
        endgame_copies=endgame_copies,
    )


@pytest.mark.parametrize("seed", range(5))
def test_larger_random_swarm_completes(seed: int) -> None:
    run_swarm(
        seed,
        total_length=64 * 40 - 5,
        piece_length=64,
        num_peers=12,
        num_corrupt=2,
        depth=6,
        endgame_copies=2,
    )
