"""Upload slots: which interested peers we unchoke, and the rotation that keeps it fair.

A task unchokes at most ``slots`` peers at once, and every ``rotate_s`` the peer that has been
unchoked longest makes way for the one that has waited longest, as long as someone is waiting
(a round-robin form of BitTorrent's optimistic unchoke: in a cooperative swarm there is no
tit-for-tat to enforce, only starvation to avoid).

How many slots is the task's choice (``peerwire.wireconfig.WireConfig.max_unchoked``). BEP 3
clients use about four, so that each requester gets a useful share of a slow uplink; our peers
unchoke every interested connection by default and let TCP share the uplink, because a peer that
became interested late otherwise waits behind every neighbour's queue.

Sans-IO: the shell reports interest and departures, asks ``rotate(now)`` on its tick and sends
the chokes and unchokes it is told to.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)


class Choker(Generic[P]):
    """Upload slots of one task. ``P`` is the peer key (hashable)."""

    __slots__ = ("_unchoked", "_waiting", "rotate_s", "slots")

    def __init__(self, *, slots: int, rotate_s: float) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, not {slots}")
        if not rotate_s > 0:
            raise ValueError(f"rotate_s must be positive, not {rotate_s!r}")
        self.slots = slots
        self.rotate_s = rotate_s
        #: Unchoked peers -> when they were unchoked, oldest first.
        self._unchoked: OrderedDict[P, float] = OrderedDict()
        #: Interested, choked peers, in the order they started waiting.
        self._waiting: OrderedDict[P, None] = OrderedDict()

    @property
    def unchoked(self) -> tuple[P, ...]:
        return tuple(self._unchoked)

    @property
    def waiting(self) -> tuple[P, ...]:
        return tuple(self._waiting)

    def is_unchoked(self, peer: P) -> bool:
        return peer in self._unchoked

    def interested(self, peer: P, now: float) -> list[P]:
        """``peer`` wants to download from us; returns the peers to unchoke now (it, or none
        while every slot is taken: it waits its turn)."""
        if peer in self._unchoked or peer in self._waiting:
            return []
        self._waiting[peer] = None
        return self._fill(now)

    def not_interested(self, peer: P, now: float) -> list[P]:
        """``peer`` wants nothing more from us (the shell chokes it); returns who to unchoke in
        its place."""
        self._waiting.pop(peer, None)
        if self._unchoked.pop(peer, None) is None:
            return []
        return self._fill(now)

    def left(self, peer: P, now: float) -> list[P]:
        """``peer`` disconnected or was banned; returns who to unchoke in its place."""
        return self.not_interested(peer, now)

    def rotate(self, now: float) -> tuple[list[P], list[P]]:
        """(to choke, to unchoke): the longest-unchoked peer, if it has had its slot for
        ``rotate_s``, gives way to the longest-waiting one; the choked peer waits again (it is
        still interested). Nothing changes while nobody waits."""
        if not self._waiting:
            return [], self._fill(now)
        if len(self._unchoked) < self.slots:
            return [], self._fill(now)
        oldest, since = next(iter(self._unchoked.items()))
        if now - since < self.rotate_s:
            return [], []
        del self._unchoked[oldest]
        unchoke = self._fill(now)
        self._waiting[oldest] = None
        return [oldest], unchoke

    def _fill(self, now: float) -> list[P]:
        chosen: list[P] = []
        while len(self._unchoked) < self.slots and self._waiting:
            peer, _ = self._waiting.popitem(last=False)
            self._unchoked[peer] = now
            chosen.append(peer)
        return chosen
