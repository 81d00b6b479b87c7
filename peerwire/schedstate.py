"""The scheduler's records: a started piece's blocks, what it knows of one peer, and the outcome
of a block arriving (``peerwire.scheduler``)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from peerwire.bitfield import Bitfield
from peerwire.layout import Block

P = TypeVar("P", bound=Hashable)


@dataclass(frozen=True, slots=True)
class BlockOutcome(Generic[P]):
    """What the shell does after a block is fully in the piece buffer."""

    #: Endgame duplicates still in flight at other peers: send them ``cancel``.
    cancels: tuple[tuple[P, Block], ...]
    #: Every block of ``block.index`` is now in: verify the piece.
    piece_complete: bool


class PieceBlocks(Generic[P]):
    """A started, not yet verified piece."""

    __slots__ = ("blocks", "open", "received")

    def __init__(self, blocks: list[Block]) -> None:
        self.blocks = blocks
        # OrderedDict as an ordered set: blocks are taken from the front, which a plain dict
        # makes O(deleted entries) per scan.
        self.open: OrderedDict[Block, None] = OrderedDict.fromkeys(blocks)
        #: Blocks in the buffer, and the peer each came from (to blame or discard later).
        self.received: dict[Block, P] = {}


class PeerBlocks:
    """What the scheduler knows about one connected peer."""

    __slots__ = ("avoid", "bitfield", "endgame_after", "late", "recent_cap", "wanted")

    def __init__(self, num_pieces: int, recent_cap: int) -> None:
        #: How many blocks ``avoid`` and ``late`` remember at most (the oldest are forgotten).
        self.recent_cap = recent_cap
        self.bitfield = Bitfield(num_pieces)
        #: Pieces it has that we lack (non-zero means we are interested).
        self.wanted = 0
        #: Blocks not to ask it for until the given clock time (it rejected them or timed out).
        self.avoid: OrderedDict[Block, float] = OrderedDict()
        #: Requests we stopped counting (timeout, choke, cancel) that it may still answer, and
        #: when we stopped.
        self.late: OrderedDict[Block, float] = OrderedDict()
        #: Clock time before which an endgame scan finds nothing to duplicate here.
        self.endgame_after = float("-inf")

    def avoided(self, block: Block, now: float) -> bool:
        """Whether ``block`` is not to be asked of this peer now (an expired entry goes)."""
        until = self.avoid.get(block)
        if until is None:
            return False
        if until > now:
            return True
        del self.avoid[block]
        return False

    def remember(self, recent: OrderedDict[Block, float], block: Block, when: float) -> None:
        """Record into ``avoid`` or ``late``, forgetting the oldest entry past the cap."""
        recent[block] = when
        recent.move_to_end(block)
        if len(recent) > self.recent_cap:
            recent.popitem(last=False)
