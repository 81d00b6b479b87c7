from __future__ import annotations

import random

import pytest

from peerwire.bitfield import Bitfield
from peerwire.picker import POLICIES, PiecePicker, get_policy


def bitfield_of(num_pieces: int, pieces: list[int]) -> Bitfield:
    bitfield = Bitfield(num_pieces)
    for index in pieces:
        bitfield.add(index)
    return bitfield


def picker_with(
    peers: list[list[int]], *, num_pieces: int = 8, seed: int = 0, policy: str = "rarest_first"
) -> PiecePicker:
    picker = PiecePicker(num_pieces, rng=random.Random(seed), random_first_pieces=4, policy=policy)
    for pieces in peers:
        picker.add_peer(bitfield_of(num_pieces, pieces))
    return picker


def test_availability_counts_peers_with_each_piece() -> None:
    picker = picker_with([[0, 1, 2], [1, 2], [2]])
    assert [picker.availability(i) for i in range(4)] == [1, 2, 3, 0]
    picker.add_have(3)
    assert picker.availability(3) == 1
    picker.remove_peer(bitfield_of(8, [1, 2]))
    assert [picker.availability(i) for i in range(4)] == [1, 1, 2, 1]


def test_remove_peer_below_zero_is_an_error() -> None:
    picker = picker_with([])
    with pytest.raises(ValueError, match="below zero"):
        picker.remove_peer(bitfield_of(8, [0]))


def test_bitfield_of_another_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="pieces"):
        picker_with([]).add_peer(Bitfield(9))


@pytest.mark.parametrize(
    ("peers", "candidates", "expected"),
    [
        ([[0, 1, 2], [1, 2], [2]], [0, 1, 2], 0),
        ([[0, 1, 2], [1, 2], [2]], [1, 2], 1),
        ([[0, 1, 2, 3], [0, 1, 2, 3], [0, 1], [3]], [0, 1, 2, 3], 2),
        ([[5], [5], [6]], [5, 6], 6),
    ],
)
def test_picker_prefers_rarest_piece(
    peers: list[list[int]], candidates: list[int], expected: int
) -> None:
    for seed in range(10):
        picker = picker_with(peers, seed=seed)
        assert picker.pick(candidates, completed=10) == expected


def test_rarest_ties_are_broken_at_random_among_the_rarest_only() -> None:
    peers = [[0, 1, 2, 3], [2, 3]]  # 0 and 1 are rarest
    picked = {picker_with(peers, seed=seed).pick([0, 1, 2, 3], completed=10) for seed in range(30)}
    assert picked == {0, 1}


def test_random_first_picks_are_deterministic_per_seed_and_spread_over_seeds() -> None:
    peers = [list(range(8)), [0]]  # 0 is the most common, so rarest-first never picks it
    first = [picker_with(peers, seed=seed).pick(list(range(8)), completed=0) for seed in range(20)]
    again = [picker_with(peers, seed=seed).pick(list(range(8)), completed=0) for seed in range(20)]
    assert first == again
    assert len(set(first)) > 1
    assert 0 in first


def test_random_first_ends_after_enough_complete_pieces() -> None:
    peers = [list(range(8)), list(range(1, 8))]  # piece 0 is the unique rarest
    for seed in range(20):
        picker = picker_with(peers, seed=seed)
        assert picker.pick(list(range(8)), completed=4) == 0


def test_pick_without_candidates_is_none() -> None:
    assert picker_with([[0]]).pick([], completed=0) is None


def test_sequential_policy_takes_lowest_index_even_at_start() -> None:
    picker = picker_with([[3, 5, 7]], policy="sequential")
    assert picker.pick([7, 5, 3], completed=0) == 3


def test_random_policy_ignores_availability() -> None:
    peers = [list(range(8)), list(range(1, 8))]
    picked = {
        picker_with(peers, seed=seed, policy="random").pick(list(range(8)), completed=10)
        for seed in range(30)
    }
    assert len(picked) > 1


def test_policies_are_chosen_by_name() -> None:
    assert set(POLICIES) == {"rarest_first", "random", "sequential"}
    assert get_policy("sequential").name == "sequential"
    assert picker_with([], policy="random").policy == "random"
    with pytest.raises(ValueError, match="known: random, rarest_first, sequential"):
        get_policy("fastest")
