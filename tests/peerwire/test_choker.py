"""peerwire.choker: upload slots, filled in arrival order, rotated so nobody starves."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerwire.choker import Choker


def test_interested_peers_fill_the_free_slots_in_arrival_order() -> None:
    choker: Choker[str] = Choker(slots=2, rotate_s=5.0)
    assert choker.interested("a", 0.0) == ["a"]
    assert choker.interested("b", 0.0) == ["b"]
    assert choker.interested("c", 0.0) == []
    assert choker.unchoked == ("a", "b")
    assert choker.waiting == ("c",)


def test_interest_twice_changes_nothing() -> None:
    choker: Choker[str] = Choker(slots=1, rotate_s=5.0)
    choker.interested("a", 0.0)
    choker.interested("b", 0.0)
    assert choker.interested("a", 1.0) == []
    assert choker.interested("b", 1.0) == []
    assert (choker.unchoked, choker.waiting) == (("a",), ("b",))


def test_a_peer_that_loses_interest_frees_its_slot_for_the_longest_waiting() -> None:
    choker: Choker[str] = Choker(slots=1, rotate_s=5.0)
    for peer in "abc":
        choker.interested(peer, 0.0)
    assert choker.not_interested("a", 1.0) == ["b"]
    assert choker.waiting == ("c",)


def test_a_waiting_peer_that_leaves_is_forgotten() -> None:
    choker: Choker[str] = Choker(slots=1, rotate_s=5.0)
    for peer in "abc":
        choker.interested(peer, 0.0)
    assert choker.left("b", 1.0) == []
    assert choker.left("a", 1.0) == ["c"]
    assert choker.waiting == ()


def test_rotation_waits_for_rotate_s() -> None:
    choker: Choker[str] = Choker(slots=1, rotate_s=5.0)
    choker.interested("a", 0.0)
    choker.interested("b", 1.0)
    assert choker.rotate(4.9) == ([], [])
    assert choker.rotate(5.0) == (["a"], ["b"])
    assert choker.waiting == ("a",)  # still interested: waits its next turn
    assert choker.rotate(9.9) == ([], [])
    assert choker.rotate(10.0) == (["b"], ["a"])


def test_no_rotation_while_nobody_waits() -> None:
    choker: Choker[str] = Choker(slots=2, rotate_s=1.0)
    choker.interested("a", 0.0)
    choker.interested("b", 0.0)
    assert choker.rotate(100.0) == ([], [])
    assert choker.unchoked == ("a", "b")


def test_rotation_takes_the_longest_unchoked_first() -> None:
    choker: Choker[str] = Choker(slots=2, rotate_s=1.0)
    choker.interested("a", 0.0)
    choker.interested("b", 0.5)
    choker.not_interested("a", 0.6)
    choker.interested("c", 0.7)  # takes a's slot at 0.7: b is now the oldest
    choker.interested("d", 0.8)
    assert choker.rotate(2.0) == (["b"], ["d"])


@pytest.mark.parametrize(("slots", "rotate_s"), [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_choker_rejects_invalid_settings(slots: int, rotate_s: float) -> None:
    with pytest.raises(ValueError):
        Choker(slots=slots, rotate_s=rotate_s)


@given(
    st.lists(
        st.tuples(st.sampled_from(["interested", "not", "left", "rotate"]), st.integers(0, 6)),
        max_size=80,
    ),
    st.integers(1, 3),
)
def test_slots_are_never_exceeded_and_every_waiting_peer_is_served(
    steps: list[tuple[str, int]], slots: int
) -> None:
    choker: Choker[int] = Choker(slots=slots, rotate_s=1.0)
    now = 0.0
    interested: set[int] = set()
    for action, peer in steps:
        now += 0.5
        if action == "interested":
            choker.interested(peer, now)
            interested.add(peer)
        elif action == "not":
            choker.not_interested(peer, now)
            interested.discard(peer)
        elif action == "left":
            choker.left(peer, now)
            interested.discard(peer)
        else:
            choker.rotate(now)
        assert len(choker.unchoked) <= slots
        assert not set(choker.unchoked) & set(choker.waiting)
        assert set(choker.unchoked) | set(choker.waiting) == interested
        # A free slot is never left empty while someone waits.
        assert len(choker.unchoked) == slots or not choker.waiting
    # Rotation serves every waiting peer within (waiting / slots + 1) turns.
    served: set[int] = set(choker.unchoked)
    for _ in range(len(interested) + 1):
        now += 1.0
        _, unchoked = choker.rotate(now)
        served.update(unchoked)
    assert served == interested
