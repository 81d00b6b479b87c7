"""Piece selection policy: which new piece to start next, given what a peer can give us.

Pure policy, no bookkeeping of requests (that is ``peerwire.requests``) and no notion of started
pieces (the scheduler gives those strict priority before it ever asks here). The picker owns one
piece of state, the availability count of every piece among connected peers, because the
rarest-first policy needs it.

Policies are chosen by name from a small registry (as Kraken's scheduler does):

* ``rarest_first`` - the piece the fewest connected peers have, ties broken at random, so rare
  pieces spread before their holders leave and peers do not all chase the same piece.
* ``random`` - uniformly random among the candidates.
* ``sequential`` - lowest index first (streaming a file in order; weakest for the swarm).

While fewer than ``random_first_pieces`` pieces are complete, policies that ask for it pick at
random instead: the first piece is then likely a common one that completes quickly, so we have
something to trade early (BEP 3 "Piece downloading strategy" describes the same idea).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from peerwire.bitfield import Bitfield

#: ``choose(candidates, availability, rng) -> piece index``; ``candidates`` is never empty.
ChooseFn = Callable[[Sequence[int], Sequence[int], random.Random], int]


@dataclass(frozen=True, slots=True)
class PickPolicy:
    """One named selection policy."""

    name: str
    choose: ChooseFn
    #: Whether the random-first phase applies (it would defeat ``sequential``).
    random_first: bool


def _rarest_first(
    candidates: Sequence[int], availability: Sequence[int], rng: random.Random
) -> int:
    rarest: list[int] = []
    lowest = -1
    for index in candidates:
        count = availability[index]
        if count < lowest or lowest < 0:
            lowest = count
            rarest = [index]
        elif count == lowest:
            rarest.append(index)
    return rarest[0] if len(rarest) == 1 else rng.choice(rarest)


def _random(candidates: Sequence[int], availability: Sequence[int], rng: random.Random) -> int:
    return rng.choice(candidates)


def _sequential(candidates: Sequence[int], availability: Sequence[int], rng: random.Random) -> int:
    return min(candidates)


POLICIES: dict[str, PickPolicy] = {
    policy.name: policy
    for policy in (
        PickPolicy("rarest_first", _rarest_first, random_first=True),
        PickPolicy("random", _random, random_first=False),
        PickPolicy("sequential", _sequential, random_first=False),
    )
}


def get_policy(name: str) -> PickPolicy:
    """The policy registered as ``name``; ValueError listing the known names otherwise."""
    try:
        return POLICIES[name]
    except KeyError:
        known = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown piece policy {name!r}; known: {known}") from None


class PiecePicker:
    """Availability counts plus the selection policy.

    The scheduler reports every connected peer's pieces (``add_peer``/``add_have``/
    ``remove_peer``) and asks ``pick`` for the next piece to start among candidates it has
    already filtered (the peer has it, we lack it, nobody has started it).
    """

    __slots__ = ("_availability", "_policy", "_rng", "random_first_pieces")

    def __init__(
        self,
        num_pieces: int,
        *,
        rng: random.Random,
        random_first_pieces: int = 4,
        policy: str = "rarest_first",
    ) -> None:
        if num_pieces < 0:
            raise ValueError(f"num_pieces must be >= 0, got {num_pieces}")
        if random_first_pieces < 0:
            raise ValueError(f"random_first_pieces must be >= 0, got {random_first_pieces}")
        self._availability = [0] * num_pieces
        self._rng = rng
        self._policy = get_policy(policy)
        self.random_first_pieces = random_first_pieces

    @property
    def policy(self) -> str:
        return self._policy.name

    def availability(self, index: int) -> int:
        """How many connected peers have piece ``index``."""
        return self._availability[index]

    def add_peer(self, bitfield: Bitfield) -> None:
        """A peer's ``bitfield`` (or ``have all``) arrived."""
        self._check(bitfield)
        availability = self._availability
        for index in bitfield:
            availability[index] += 1

    def add_have(self, index: int) -> None:
        """A peer announced ``have index`` (the caller ignores repeats of a piece it knew)."""
        self._availability[index] += 1

    def remove_peer(self, bitfield: Bitfield) -> None:
        """A peer whose pieces are ``bitfield`` left (or sent a new bitfield)."""
        self._check(bitfield)
        availability = self._availability
        for index in bitfield:
            if availability[index] <= 0:
                raise ValueError(f"availability of piece {index} would drop below zero")
            availability[index] -= 1

    def pick(self, candidates: Sequence[int], *, completed: int) -> int | None:
        """The next piece to start among ``candidates``, or None when there are none.

        ``completed`` is how many pieces we already have; below ``random_first_pieces`` the
        choice is uniformly random when the policy allows it.
        """
        if not candidates:
            return None
        if self._policy.random_first and completed < self.random_first_pieces:
            return self._rng.choice(candidates)
        return self._policy.choose(candidates, self._availability, self._rng)

    def _check(self, bitfield: Bitfield) -> None:
        if bitfield.num_pieces != len(self._availability):
            raise ValueError(
                f"bitfield has {bitfield.num_pieces} pieces, task has {len(self._availability)}"
            )
