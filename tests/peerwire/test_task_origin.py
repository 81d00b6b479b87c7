"""Held pieces: the scheduler's ``hold`` and ``unhold``, pure, with a fake clock.

A piece is held while its digest is unknown (nothing could verify it) or while this peer
fetches it from the origin. The same in a running task over real sockets is in
``test_shell_origin.py`` (digests learned, pieces claimed and released, bans) and, for pieces
read from a real HTTP origin, ``tests/dfget/test_originfetch.py``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from peerwire.layout import Block, PieceLayout
from peerwire.scheduler import Scheduler
from tests.peerwire.test_scheduler import BLOCK, PIECE, FakeClock, bits, deliver, join, piece_blocks

# -- Scheduler: hold and unhold ------------------------------------------------------------------


def make(
    num_pieces: int = 4,
    *,
    held: Iterable[int] = (),
    have: Iterable[int] = (),
    depth: int = 64,
) -> Scheduler[str]:
    """A scheduler with a deep pipeline: one call asks for every block a peer can give."""
    return Scheduler(
        PieceLayout(num_pieces * PIECE, PIECE),
        bits(num_pieces, list(have)),
        block_bytes=BLOCK,
        pipeline_depth=depth,
        request_timeout_s=5.0,
        clock=FakeClock(),
        rng=random.Random(0),
        random_first_pieces=0,
        held=held,
    )


def indices(blocks: list[Block]) -> set[int]:
    return {block.index for block in blocks}


def test_held_piece_is_never_requested() -> None:
    scheduler = make(held=[1])
    join(scheduler, "seed")
    assert scheduler.is_held(1)
    assert not scheduler.is_held(0)
    assert indices(scheduler.next_requests("seed")) == {0, 2, 3}
    assert scheduler.next_requests("seed") == []
    join(scheduler, "only-the-held-one", [1])
    assert scheduler.next_requests("only-the-held-one") == []


def test_unhold_makes_a_held_piece_requestable() -> None:
    scheduler = make(held=[1, 2])
    join(scheduler, "seed")
    assert indices(scheduler.next_requests("seed")) == {0, 3}
    scheduler.unhold(2)
    assert not scheduler.is_held(2)
    assert scheduler.next_requests("seed") == piece_blocks(2)
    scheduler.unhold(0)  # not held: a no-op, and piece 0 is not started a second time
    assert scheduler.next_requests("seed") == []


def test_hold_after_construction_keeps_an_unstarted_piece_back() -> None:
    scheduler = make()
    assert scheduler.hold(3) is True
    assert scheduler.hold(3) is True  # already held
    join(scheduler, "seed")
    assert indices(scheduler.next_requests("seed")) == {0, 1, 2}


def test_hold_of_a_started_or_verified_piece_is_refused() -> None:
    scheduler = make(have=[3], depth=1)
    join(scheduler, "seed")
    (first,) = scheduler.next_requests("seed")  # piece started: one block in flight
    assert scheduler.hold(first.index) is False
    assert not scheduler.is_held(first.index)
    assert scheduler.hold(3) is False
    assert not scheduler.is_held(3)


def test_constructor_ignores_held_pieces_already_had() -> None:
    scheduler = make(have=[0], held=[0, 1])
    assert not scheduler.is_held(0)
    assert scheduler.is_held(1)


def test_no_endgame_duplicates_while_a_piece_is_held() -> None:
    scheduler = make(held=[3])
    join(scheduler, "a")
    join(scheduler, "b")
    assert indices(scheduler.next_requests("a")) == {0, 1, 2}
    assert not scheduler.in_endgame  # piece 3 has no request yet: not the tail
    assert scheduler.next_requests("b") == []
    scheduler.unhold(3)
    # The held piece first; only then, every block being in flight, endgame duplicates.
    blocks = scheduler.next_requests("b")
    assert blocks[:4] == piece_blocks(3)
    assert scheduler.in_endgame
    assert indices(blocks[4:]) == {0, 1, 2}


def test_endgame_starts_once_the_held_piece_is_verified_elsewhere() -> None:
    scheduler = make(held=[3])
    join(scheduler, "a")
    join(scheduler, "b")
    assert indices(scheduler.next_requests("a")) == {0, 1, 2}
    scheduler.piece_verified(3)  # from the origin
    assert scheduler.in_endgame
    duplicates = scheduler.next_requests("b")
    assert duplicates
    assert indices(duplicates) <= {0, 1, 2}


def test_piece_verified_of_a_held_piece_clears_the_hold_and_counts_as_had() -> None:
    scheduler = make(held=[1])
    join(scheduler, "seed")
    assert scheduler.piece_verified(1) == []
    assert not scheduler.is_held(1)
    assert 1 in scheduler.have
    assert scheduler.missing_count() == 3
    scheduler.unhold(1)  # late release: must not make it requestable again
    blocks = scheduler.next_requests("seed")
    assert indices(blocks) == {0, 2, 3}
    for block in blocks:
        outcome = deliver(scheduler, "seed", block)
        assert outcome is not None
        if outcome.piece_complete:
            scheduler.piece_verified(block.index)
    assert scheduler.is_complete()


def test_a_peer_with_only_held_pieces_is_still_interesting() -> None:
    """Interest is about what the peer has; the hold only delays asking it."""
    scheduler = make(have=[0, 2, 3], held=[1])
    join(scheduler, "peer", [1])
    assert scheduler.is_interesting("peer")
    assert scheduler.next_requests("peer") == []
    scheduler.unhold(1)
    assert scheduler.next_requests("peer") == piece_blocks(1)


def test_a_piece_started_and_stalled_can_be_held_for_the_origin() -> None:
    """Its only sender left with blocks missing: nobody has it now, and the origin must be
    able to take it over (what was received is dropped)."""
    scheduler = make()
    join(scheduler, "a")
    first = scheduler.next_requests("a")
    index = first[0].index
    assert not scheduler.hold(index)  # requested from a: on its way
    scheduler.peer_left("a")
    assert scheduler.hold(index)
    assert scheduler.is_held(index)
    join(scheduler, "b")
    assert index not in indices(scheduler.next_requests("b"))
    scheduler.unhold(index)
    assert index in indices(scheduler.next_requests("b", max_blocks=64))


def test_a_complete_piece_being_verified_is_not_held() -> None:
    """Every block is in and the piece waits for its verification: that decides, not the
    origin (its sender may have left meanwhile)."""
    scheduler = make()
    join(scheduler, "a")
    index = scheduler.next_requests("a")[0].index
    blocks = piece_blocks(index)
    scheduler.next_requests("a", max_blocks=64)
    outcomes = [deliver(scheduler, "a", block) for block in blocks]
    assert outcomes[-1] is not None and outcomes[-1].piece_complete
    scheduler.peer_left("a")
    assert not scheduler.hold(index)
    assert not scheduler.is_held(index)
