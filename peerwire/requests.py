"""Requests in flight: which blocks each peer has been asked for, and since when.

Only bookkeeping, no policy: the scheduler decides what to request; this module remembers what
was sent, bounds it per peer (the pipeline depth), expires it on an injected clock, and knows
which other peers hold a duplicate of a block (endgame) so they can be sent ``cancel`` when the
block arrives.

Every operation is O(1) or O(entries it returns): a per-peer index, a per-block index and one
send-ordered queue for expiry (sent times only grow, since the clock is monotonic and the
timeout is the same for every request).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

from peerwire.layout import Block

P = TypeVar("P", bound=Hashable)


class RequestManager(Generic[P]):
    """Requests in flight per peer, keyed ``(peer, block) -> sent time``.

    Peers are any hashable key (the asyncio shell uses ``PeerId``). A block may be in flight at
    several peers at once (endgame duplicates), but at most once per peer.
    """

    __slots__ = (
        "_by_block",
        "_by_copies",
        "_by_peer",
        "_clock",
        "_sent",
        "pipeline_depth",
        "timeout_s",
    )

    def __init__(
        self, *, clock: Callable[[], float], pipeline_depth: int, timeout_s: float
    ) -> None:
        if pipeline_depth <= 0:
            raise ValueError(f"pipeline_depth must be > 0, got {pipeline_depth}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self._clock = clock
        self.pipeline_depth = pipeline_depth
        self.timeout_s = timeout_s
        # Send order, for expiry. OrderedDict, not dict: popping the oldest entry stays O(1).
        self._sent: OrderedDict[tuple[P, Block], float] = OrderedDict()
        self._by_peer: dict[P, dict[Block, None]] = {}
        # Ordered "sets" of peers, so cancels come out in a reproducible order.
        self._by_block: dict[Block, dict[P, None]] = {}
        # Endgame index: copies in flight -> blocks with that many, oldest first.
        self._by_copies: dict[int, OrderedDict[Block, None]] = {}

    # -- queries ---------------------------------------------------------------------------

    def inflight(self, peer: P) -> int:
        """Requests outstanding at ``peer``."""
        blocks = self._by_peer.get(peer)
        return len(blocks) if blocks else 0

    def free_slots(self, peer: P) -> int:
        """How many more requests ``peer`` may be sent now."""
        return self.pipeline_depth - self.inflight(peer)

    def is_inflight(self, peer: P, block: Block) -> bool:
        blocks = self._by_peer.get(peer)
        return blocks is not None and block in blocks

    def copies(self, block: Block) -> int:
        """At how many peers ``block`` is in flight."""
        peers = self._by_block.get(block)
        return len(peers) if peers else 0

    def peers_for(self, block: Block) -> tuple[P, ...]:
        """The peers ``block`` is in flight at, oldest request first."""
        peers = self._by_block.get(block)
        return tuple(peers) if peers else ()

    def first_request(self, block: Block) -> tuple[P, float]:
        """The oldest request still in flight for ``block``: its peer and when it was sent
        (KeyError if none is)."""
        peer = next(iter(self._by_block[block]))
        return peer, self._sent[(peer, block)]

    def blocks_of(self, peer: P) -> Iterator[Block]:
        """The blocks in flight at ``peer``, oldest first."""
        return iter(tuple(self._by_peer.get(peer, ())))

    def inflight_blocks(self) -> Iterator[tuple[Block, int]]:
        """Every block in flight somewhere with its number of copies, fewest copies first.

        For endgame: a caller that stops after a few blocks costs only what it reads.
        """
        for copies in sorted(self._by_copies):
            for block in self._by_copies[copies]:
                yield block, copies

    def __len__(self) -> int:
        return len(self._sent)

    # -- changes ---------------------------------------------------------------------------

    def add(self, peer: P, block: Block) -> None:
        """Record that ``request block`` was sent to ``peer`` now.

        ValueError when the block is already in flight there or the pipeline is full: both are
        bugs of the caller, which must ask ``free_slots``/``is_inflight`` first.
        """
        key = (peer, block)
        if key in self._sent:
            raise ValueError(f"{block} is already in flight at {peer}")
        blocks = self._by_peer.setdefault(peer, {})
        if len(blocks) >= self.pipeline_depth:
            raise ValueError(f"pipeline of {peer} is full ({self.pipeline_depth} requests)")
        self._sent[key] = self._clock()
        blocks[block] = None
        peers = self._by_block.setdefault(block, {})
        peers[peer] = None
        self._recount(block, len(peers) - 1, len(peers))

    def discard(self, peer: P, block: Block) -> bool:
        """Forget one request (answered, rejected, ...); True when it was in flight."""
        if self._sent.pop((peer, block), None) is None:
            return False
        self._unindex(peer, block)
        return True

    def arrived(self, peer: P, block: Block) -> list[tuple[P, Block]]:
        """``block`` came in from ``peer``: forget every request for it.

        Returns the duplicates that were in flight at *other* peers (endgame), for the caller to
        send ``cancel`` (BEP 3: "cancel ... generally only sent towards the end of a download,
        during what's called 'endgame mode'").
        """
        self.discard(peer, block)
        others = self.peers_for(block)
        for other in others:
            self.discard(other, block)
        return [(other, block) for other in others]

    def remove_peer(self, peer: P) -> list[Block]:
        """Forget every request at ``peer`` (it left or choked us); returns those blocks."""
        blocks = list(self._by_peer.get(peer, ()))
        for block in blocks:
            del self._sent[(peer, block)]
            self._unindex(peer, block)
        return blocks

    def expire(self) -> list[tuple[P, Block]]:
        """Forget and return the requests sent ``timeout_s`` or more ago, oldest first."""
        deadline = self._clock() - self.timeout_s
        expired: list[tuple[P, Block]] = []
        sent = self._sent
        while sent:
            key, sent_at = next(iter(sent.items()))
            if sent_at > deadline:
                break
            del sent[key]
            self._unindex(*key)
            expired.append(key)
        return expired

    def _unindex(self, peer: P, block: Block) -> None:
        blocks = self._by_peer[peer]
        del blocks[block]
        if not blocks:
            del self._by_peer[peer]
        peers = self._by_block[block]
        del peers[peer]
        self._recount(block, len(peers) + 1, len(peers))
        if not peers:
            del self._by_block[block]

    def _recount(self, block: Block, before: int, after: int) -> None:
        if before:
            bucket = self._by_copies[before]
            del bucket[block]
            if not bucket:
                del self._by_copies[before]
        if after:
            self._by_copies.setdefault(after, OrderedDict())[block] = None
