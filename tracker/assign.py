"""Back-to-source planning for one task: which peer fetches which pieces from the origin.

While some pieces exist nowhere in the swarm, someone has to fetch them from the origin. If
every peer did, the origin would send each byte once per peer; if one peer did, the origin's
bandwidth would be used through one connection. The planner hands *disjoint* sets of missing
pieces to at most ``budget`` peers at once, so the origin sends each piece about once while
several fetchers pull in parallel (this is what Dragonfly's supernode does).

Piece sets are Python ints in BEP 3 bitfield order: the bitfield bytes read big-endian, so
piece ``i`` of an ``n``-piece task is bit ``8 * ceil(n / 8) - 1 - i``. A peer's ``df_have`` is
then ``int.from_bytes(have, "big")``, the swarm's union is an OR, and "lowest missing piece"
is the highest set bit: ``bit_length`` finds it without looking at pieces one by one.

Pure: no I/O, no clock reads (``now`` is passed in).
"""

from __future__ import annotations

import math
from typing import Final

#: Target assignment size when the peer's rate is unknown.
DEFAULT_PIECES: Final = 2
#: With ``split_large``, a peer that finds nothing unassigned takes part of the assignment with
#: the most pieces its fetcher cannot reach before it hears of the split, if that part holds at
#: least this many pieces (fewer are not worth a Range request of their own).
STEAL_MIN_PIECES: Final = 16
#: The fetcher of an assignment keeps what it may fetch before it hears of a split, at its
#: reported rate, with this margin: it works through its pieces from one end, and the tracker
#: knows its position as of its last announce; it learns what it lost at its next announce, at
#: most one interval later; meanwhile up to ``STEAL_INFLIGHT_S`` of Range requests may be on
#: their way. An assignment whose fetcher has not reported a rate yet (one announce so far) is
#: not split: on loopback a fetcher may be through the whole file before its second announce,
#: and the origin would send the split part twice.
STEAL_KEEP_MARGIN: Final = 2.5
STEAL_INFLIGHT_S: Final = 1.0


def bitfield_to_int(bitfield: bytes) -> int:
    """A BEP 3 bitfield (piece 0 = high bit of byte 0) as a piece-set int."""
    return int.from_bytes(bitfield, "big")


def full_mask(num_pieces: int) -> int:
    """The piece-set int holding every piece of an ``num_pieces``-piece task (no spare bits)."""
    if num_pieces < 0:
        raise ValueError(f"num_pieces must not be negative, not {num_pieces}")
    spare_bits = -num_pieces % 8  # BEP 3: spare bits at the end of the last byte stay clear
    return ((1 << num_pieces) - 1) << spare_bits


def piece_indices(mask: int, num_pieces: int) -> list[int]:
    """The pieces in ``mask``, ascending; bits past the last piece (spare bits) are ignored."""
    if mask < 0:
        raise ValueError("a piece set is a non-negative int")
    nbytes = (num_pieces + 7) // 8
    data = (mask & full_mask(num_pieces)).to_bytes(nbytes, "big")
    found: list[int] = []
    for byte_index, byte in enumerate(data):
        if byte:
            base = byte_index * 8
            found.extend(base + bit for bit in _BYTE_BITS[byte])
    return found


def _in_order(held: _Assignment) -> tuple[int, ...]:
    return tuple(reversed(held.pieces)) if held.descending else tuple(held.pieces)


#: For each byte value, the offsets (0 = high bit) of its set bits.
_BYTE_BITS: Final = tuple(
    tuple(bit for bit in range(8) if value & (0x80 >> bit)) for value in range(256)
)


class _Assignment:
    """One fetcher's pieces: as a set int (for set algebra) and as a sorted list (to answer)."""

    __slots__ = ("descending", "expires_at", "mask", "pieces", "rate_bps", "seen_at")

    def __init__(
        self,
        mask: int,
        pieces: list[int],
        expires_at: float,
        now: float,
        *,
        descending: bool = False,
    ) -> None:
        self.mask = mask
        self.pieces = pieces
        self.expires_at = expires_at
        #: Fetched highest first (the upper part of a split assignment: it starts at the end
        #: farthest from where the other fetcher works).
        self.descending = descending
        #: The fetcher's download rate at its last announce since it got the assignment (None
        #: until then: a rate from before says nothing of how fast it goes through this), and
        #: when that was.
        self.rate_bps: float | None = None
        self.seen_at = now


class SourcePlanner:
    """Disjoint back-to-source assignments for one task.

    Invariants: assignments are pairwise disjoint; their union is ``self._assigned``; only
    peers with a non-empty assignment are stored, so at most ``budget`` are (memory is bounded
    by ``budget * max_pieces`` plus a few ints of the task's size).

    An assignment lives until its pieces show up in the swarm (the fetcher announced them), its
    peer leaves (``release``), or ``ttl_s`` passes without progress; then its remaining pieces
    are free for the next peer that asks. Progress (a piece of the assignment became available)
    and topping up both restart the ttl: the peer is alive and working.
    """

    __slots__ = (
        "_assigned",
        "_assigned_count",
        "_by_peer",
        "_full",
        "_top_bit",
        "assigned_total",
        "budget",
        "fair_share",
        "max_pieces",
        "num_pieces",
        "split_large",
        "ttl_s",
    )

    def __init__(
        self,
        num_pieces: int,
        *,
        budget: int,
        max_pieces: int,
        ttl_s: float,
        fair_share: bool = False,
        split_large: bool = False,
    ) -> None:
        if num_pieces < 0:
            raise ValueError(f"num_pieces must not be negative, not {num_pieces}")
        if budget < 0:
            raise ValueError(f"budget must not be negative, not {budget}")
        if max_pieces < 1:
            raise ValueError(f"max_pieces must be at least 1, not {max_pieces}")
        if not (math.isfinite(ttl_s) and ttl_s > 0):
            raise ValueError(f"ttl_s must be a positive number of seconds, not {ttl_s!r}")
        self.num_pieces = num_pieces
        #: Size an assignment at least to this peer's share of what is still unassigned, so
        #: that the fetchers take the whole file in one or two rounds instead of being fed a
        #: few pieces per announce (``assign``).
        self.fair_share = fair_share
        #: With ``fair_share``: a newcomer that finds nothing unassigned takes part of an
        #: assignment that its fetcher cannot reach soon (``STEAL_KEEP_MARGIN``).
        self.split_large = split_large
        self.budget = budget
        self.max_pieces = max_pieces
        self.ttl_s = ttl_s
        self._full = full_mask(num_pieces)
        #: Bit position of piece 0; piece i is bit ``_top_bit - i``.
        self._top_bit = 8 * ((num_pieces + 7) // 8) - 1
        self._assigned = 0
        self._assigned_count = 0
        self._by_peer: dict[bytes, _Assignment] = {}
        #: Pieces handed out since the planner was made (a counter for metrics).
        self.assigned_total = 0

    @property
    def fetchers(self) -> int:
        """Peers holding a non-empty assignment."""
        return len(self._by_peer)

    @property
    def assigned_pieces(self) -> int:
        """Pieces currently assigned to some peer."""
        return self._assigned_count

    def missing(self, available: int) -> int:
        """Pieces that no live peer holds and nobody is assigned to fetch."""
        return (self._full & ~(available | self._assigned)).bit_count()

    def assignment_of(self, peer_key: bytes) -> tuple[int, ...]:
        """The pieces ``peer_key`` is assigned now, in the order to fetch them, without
        changing anything."""
        held = self._by_peer.get(peer_key)
        return () if held is None else _in_order(held)

    def assign(
        self,
        peer_key: bytes,
        now: float,
        available: int,
        *,
        rate_bps: float | None,
        piece_length: int,
        interval_s: float,
        contenders: int | None = None,
    ) -> tuple[int, ...]:
        """This peer's assignment, topped up to its target size: piece indices in the order to
        fetch them, ascending except for the upper part of a split assignment (descending).

        ``available`` is the union of the bitfields of live peers. Sizing: enough pieces to keep the
        peer busy for one announce interval at ``rate_bps``, clamped to 1..``max_pieces``;
        ``DEFAULT_PIECES`` when the rate is unknown. With ``fair_share``, at least a share of the
        unassigned pieces (still capped by ``max_pieces``): on the peer's first announce
        (``contenders`` None: the tracker cannot know how many follow), over the fetcher slots left
        (``budget`` less the peers already fetching), because the first of a crowd of 200 sees one
        contender and would otherwise fetch the whole file alone, its link the origin's bottleneck;
        later, what it holds plus a share over the peers that want the file (``contenders``, up to
        ``budget``), so that a lone peer gets the rest of the file on its second announce (``dfget``
        makes that one at once) and the first of ten to come back does not take it all. With
        ``split_large``, peers that come later, when nothing is unassigned, take half of what a slow
        fetcher cannot reach before its next announce (``STEAL_MIN_PIECES``, ``STEAL_KEEP_MARGIN``):
        the far end, fetched towards the other fetcher, so that the two meet only after both have
        announced again. A peer with no assignment gets one only while fewer than ``budget`` peers
        hold one.
        """
        if piece_length < 1:
            raise ValueError(f"piece_length must be positive, not {piece_length}")
        self._settle(now, available)
        held = self._by_peer.get(peer_key)
        if held is None and len(self._by_peer) >= self.budget:
            return ()
        if held is not None:
            held.seen_at = now
            if rate_bps is not None and not math.isnan(rate_bps):
                held.rate_bps = rate_bps
        target = self._target(rate_bps, piece_length, interval_s)
        have = 0 if held is None else len(held.pieces)
        if self.fair_share:
            unassigned = (self._full & ~(available | self._assigned)).bit_count()
            if contenders is None:
                # A first announce: a crowd may still be arriving (the first of 200 sees one
                # contender), so split over every fetcher slot left.
                slots = self.budget - (len(self._by_peer) - (held is not None))
            else:
                # The contenders share what is left, each on top of what it holds (the first
                # of ten to come back must not take it all).
                slots = min(self.budget, contenders)
            share = have + -(-unassigned // max(1, slots))
            target = max(target, min(self.max_pieces, share))
        if have >= target:
            return _in_order(held) if held is not None else ()
        mask, pieces = self._take(target - have, available)
        descending = False
        if not pieces and held is None and self.fair_share and self.split_large:
            mask, pieces, descending = self._steal(now, piece_length, interval_s)
        if not pieces:
            return _in_order(held) if held is not None else ()
        self._assigned |= mask
        self._assigned_count += len(pieces)
        self.assigned_total += len(pieces)
        expires_at = now + self.ttl_s
        if held is None:
            held = self._by_peer[peer_key] = _Assignment(
                mask, pieces, expires_at, now, descending=descending
            )
            return _in_order(held)
        held.mask |= mask
        held.pieces = sorted(held.pieces + pieces)
        held.expires_at = expires_at
        return _in_order(held)

    def release(self, peer_key: bytes) -> None:
        """The peer left: its pieces are free for others at once."""
        held = self._by_peer.pop(peer_key, None)
        if held is not None:
            self._free(held)

    def expire(self, now: float) -> int:
        """Take back every assignment whose ttl has passed; returns how many pieces came back."""
        released = 0
        for peer_key in [key for key, held in self._by_peer.items() if held.expires_at <= now]:
            held = self._by_peer.pop(peer_key)
            released += len(held.pieces)
            self._free(held)
        return released

    # --- internals ------------------------------------------------------------------------

    def _settle(self, now: float, available: int) -> None:
        """Drop pieces that are now available (progress: restarts the ttl), then expire."""
        if self._assigned & available:
            top_bit = self._top_bit
            for peer_key, held in list(self._by_peer.items()):
                fetched = held.mask & available
                if not fetched:
                    continue
                held.mask ^= fetched
                self._assigned ^= fetched
                # ``fetched`` spans only this assignment, so these shifts stay small.
                kept = [i for i in held.pieces if not (fetched >> (top_bit - i)) & 1]
                self._assigned_count -= len(held.pieces) - len(kept)
                if kept:
                    held.pieces = kept
                    held.expires_at = now + self.ttl_s
                else:
                    del self._by_peer[peer_key]
        self.expire(now)

    def _target(self, rate_bps: float | None, piece_length: int, interval_s: float) -> int:
        if rate_bps is None or math.isnan(rate_bps) or math.isnan(interval_s):
            return min(DEFAULT_PIECES, self.max_pieces)
        wanted = rate_bps * interval_s / piece_length
        if wanted >= self.max_pieces:  # also catches inf
            return self.max_pieces
        return max(1, math.ceil(wanted))

    def _take(self, count: int, available: int) -> tuple[int, list[int]]:
        """Up to ``count`` of the lowest-index free pieces, as (set int, ascending list).

        Lowest first yields one contiguous run whenever the lowest gap is long enough: one
        Range request for the fetcher, and a reader streaming from the start gets its bytes
        soonest. A shorter gap is taken whole and the rest comes from the next gap.
        """
        free = self._full & ~(available | self._assigned)
        top_bit = self._top_bit
        mask = 0
        pieces: list[int] = []
        while count > 0 and free:
            run_top = free.bit_length() - 1
            # Look at no more than ``count`` bits below the run's first piece: small ints only.
            width = min(count, run_top + 1)
            window = free >> (run_top + 1 - width)
            run = width - (window ^ ((1 << width) - 1)).bit_length()
            low = run_top + 1 - run
            first = top_bit - run_top
            pieces.extend(range(first, first + run))
            chunk = ((1 << run) - 1) << low
            mask |= chunk
            free &= (1 << low) - 1  # drop the run and everything above it
            count -= run
        return mask, pieces

    def _steal(
        self, now: float, piece_length: int, interval_s: float
    ) -> tuple[int, list[int], bool]:
        """Half of the largest part of an assignment that its fetcher cannot reach before it
        hears of the split (``STEAL_KEEP_MARGIN``), no more than an even share of everything
        assigned and at least ``STEAL_MIN_PIECES``: the end farthest from where the fetcher
        works, to be fetched in the other direction (towards it). Returns (set int, ascending
        pieces, descending); the pieces stay counted as assigned."""
        best: _Assignment | None = None
        best_spare = 0
        for held in self._by_peer.values():
            rate_bps = held.rate_bps
            if rate_bps is None or not rate_bps < math.inf:
                continue  # how far it gets is unknown
            ahead_s = max(0.0, now - held.seen_at) + interval_s + STEAL_INFLIGHT_S
            reach = math.ceil(STEAL_KEEP_MARGIN * rate_bps * ahead_s / piece_length)
            spare = len(held.pieces) - max(1, reach)
            if spare > best_spare:
                best, best_spare = held, spare
        share = -(-self._assigned_count // (len(self._by_peer) + 1))
        count = min(best_spare // 2, share)
        if best is None or count < STEAL_MIN_PIECES:
            return 0, [], False
        if best.descending:  # it works down from the top: take the bottom, fetched upwards
            pieces, best.pieces = best.pieces[:count], best.pieces[count:]
        else:
            pieces, best.pieces = best.pieces[-count:], best.pieces[:-count]
        top_bit = self._top_bit
        mask = 0
        for index in pieces:
            mask |= 1 << (top_bit - index)
        best.mask ^= mask
        # The thief's pieces are added to ``_assigned`` by the caller: take them out here.
        self._assigned ^= mask
        self._assigned_count -= count
        self.assigned_total -= count  # handed out before: not counted twice
        return mask, pieces, not best.descending

    def _free(self, held: _Assignment) -> None:
        self._assigned ^= held.mask
        self._assigned_count -= len(held.pieces)
