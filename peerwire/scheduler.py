"""Download state of one task: what to request from whom, and what to do when blocks come in.

Sans-IO. The asyncio shell reports peer events (bitfields, haves, chokes, arrivals) and asks
``next_requests`` what to send; this module composes the selection policy
(``peerwire.picker``) and the in-flight bookkeeping (``peerwire.requests``) and owns the state
of every block of every missing piece:

* *open* - nobody has been asked for it (or every request for it was freed);
* *requested* - in flight at one or more peers (more than one only in endgame);
* *receiving* - claimed by the peer whose payload is being read into the piece buffer;
* *received* - in the buffer; when all blocks of a piece are, the shell verifies it.

Priorities in ``next_requests`` (BEP 3 "Piece downloading strategy"): open blocks of started
pieces first (strict priority, so pieces complete and can be shared), then a new piece chosen by
the policy, then, once every missing block is requested somewhere (endgame), duplicates of
blocks in flight at other peers, cancelled when the first copy arrives. A duplicate waits until
the block is overdue: its request is ``OVERDUE_FACTOR`` times as old as its holder should take for
what it was asked (``expected_wait``, from the shell's rate estimate; rate estimates run high), or
``endgame_patience_s`` old at most: on slow links a request normally waits its turn at the sender
for a second or more, and duplicating every block of the tail at once wastes uploads.

Per-call cost stays near the number of blocks returned: started pieces with open blocks are
kept in their own index, a new piece costs one pass over the unstarted pieces the peer has,
and endgame scans only the requests in flight.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from peerwire.bitfield import Bitfield
from peerwire.endgame import ENDGAME_RESCAN_S, OVERDUE_FACTOR, endgame_duplicates
from peerwire.layout import Block, PieceLayout
from peerwire.picker import PiecePicker
from peerwire.requests import RequestManager
from peerwire.schedstate import BlockOutcome, PeerBlocks, PieceBlocks

__all__ = ["ENDGAME_RESCAN_S", "OVERDUE_FACTOR", "BlockOutcome", "Scheduler"]

P = TypeVar("P", bound=Hashable)


class Scheduler(Generic[P]):
    """Per-task download scheduling: one instance per task, peers keyed by any hashable."""

    def __init__(
        self,
        layout: PieceLayout,
        have: Bitfield,
        *,
        block_bytes: int,
        pipeline_depth: int,
        request_timeout_s: float,
        clock: Callable[[], float],
        rng: random.Random,
        random_first_pieces: int = 4,
        policy: str = "rarest_first",
        endgame_copies: int = 2,
        endgame_patience_s: float = 0.0,
        expected_wait: Callable[[P], float | None] | None = None,
        held: Iterable[int] = (),
    ) -> None:
        """``have`` is updated in place as pieces are verified; the scheduler is its only writer.

        ``endgame_copies`` bounds at how many peers one block may be in flight at once, and a
        block is duplicated only once its first request is ``endgame_patience_s`` old, or
        ``OVERDUE_FACTOR`` x ``expected_wait(holder)`` (seconds the holder should take for all
        it was asked; None: not known) if that is sooner.
        ``request_timeout_s`` is also how long a peer is not asked again for a block it rejected
        or let time out.
        """
        if have.num_pieces != layout.num_pieces:
            raise ValueError(f"have has {have.num_pieces} pieces, layout {layout.num_pieces}")
        if block_bytes <= 0:
            raise ValueError(f"block_bytes must be > 0, got {block_bytes}")
        if endgame_copies < 1:
            raise ValueError(f"endgame_copies must be >= 1, got {endgame_copies}")
        if endgame_patience_s < 0:
            raise ValueError(f"endgame_patience_s must be >= 0, got {endgame_patience_s}")
        self._layout = layout
        self._have = have
        self._block_bytes = block_bytes
        self._clock = clock
        self._cooldown_s = request_timeout_s
        self._endgame_copies = endgame_copies
        self._endgame_patience_s = endgame_patience_s
        self._expected_wait = expected_wait
        self._recent_cap = max(64, 4 * pipeline_depth)
        self._picker = PiecePicker(
            layout.num_pieces, rng=rng, random_first_pieces=random_first_pieces, policy=policy
        )
        self._requests: RequestManager[P] = RequestManager(
            clock=clock, pipeline_depth=pipeline_depth, timeout_s=request_timeout_s
        )
        self._unstarted: set[int] = set(have.missing())
        #: Missing pieces not to request from peers for now (``hold``): their digest is not
        #: known yet, or this peer fetches them from the origin.
        self._held: set[int] = set()
        self._active: dict[int, PieceBlocks[P]] = {}
        self._open_pieces: OrderedDict[int, None] = OrderedDict()  # active, with open blocks
        self._receiving: dict[Block, P] = {}
        self._peers: dict[P, PeerBlocks] = {}
        self._banned: set[P] = set()
        for index in held:
            self.hold(index)

    # -- queries ---------------------------------------------------------------------------

    @property
    def have(self) -> Bitfield:
        return self._have

    @property
    def in_endgame(self) -> bool:
        """Every missing block is requested, being received or received (none held)."""
        return (
            not self._unstarted
            and not self._open_pieces
            and not self._held
            and not self._have.is_complete()
        )

    def is_complete(self) -> bool:
        return self._have.is_complete()

    def missing_count(self) -> int:
        return self._have.num_pieces - len(self._have)

    def total_inflight(self) -> int:
        """Requests in flight at all peers together (endgame duplicates count each)."""
        return len(self._requests)

    def inflight(self, peer: P) -> int:
        return self._requests.inflight(peer)

    def is_interesting(self, peer: P) -> bool:
        """BEP 3 interest: ``peer`` has a piece we lack (and is not banned)."""
        return self._peer(peer).wanted > 0 and peer not in self._banned

    # -- peer events -----------------------------------------------------------------------

    def peer_joined(self, peer: P) -> None:
        if peer in self._peers:
            raise ValueError(f"peer {peer} joined twice")
        self._peers[peer] = PeerBlocks(self._have.num_pieces, self._recent_cap)

    def peer_bitfield(self, peer: P, bitfield: Bitfield) -> None:
        """The peer's ``bitfield`` message (replaces whatever we knew of its pieces)."""
        state = self._peer(peer)
        if bitfield.num_pieces != self._have.num_pieces:
            raise ValueError(
                f"bitfield has {bitfield.num_pieces} pieces, task has {self._have.num_pieces}"
            )
        self._picker.remove_peer(state.bitfield)
        state.bitfield = bitfield.copy()
        self._picker.add_peer(state.bitfield)
        theirs = int.from_bytes(state.bitfield.to_bytes(), "big")
        ours = int.from_bytes(self._have.to_bytes(), "big")
        state.wanted = (theirs & ~ours).bit_count()

    def peer_have_all(self, peer: P) -> None:
        """BEP 6 ``have all``."""
        self.peer_bitfield(peer, Bitfield.full(self._have.num_pieces))

    def peer_have(self, peer: P, index: int) -> bool:
        """The peer's ``have``; IndexError for an index outside the task (validate first).

        True when it is news of a piece we lack (the peer may have become interesting)."""
        state = self._peer(peer)
        if index in state.bitfield:
            return False
        state.bitfield.add(index)
        self._picker.add_have(index)
        if index in self._have:
            return False
        state.endgame_after = float("-inf")
        state.wanted += 1
        return True

    def peer_left(self, peer: P) -> None:
        """Connection gone: its requests and the block it was receiving become open again."""
        state = self._peers.pop(peer, None)
        if state is None:
            return
        self._picker.remove_peer(state.bitfield)
        receiving = [block for block, owner in self._receiving.items() if owner == peer]
        for block in receiving:
            del self._receiving[block]
        self._release_all(receiving + self._requests.remove_peer(peer))

    def peer_choked(self, peer: P) -> None:
        """BEP 3: a choke discards our pending requests, so they are open again.

        Call it only without the fast extension: under BEP 6 a choke keeps the requests and the
        peer rejects each one it drops (``request_rejected``).
        """
        state = self._peer(peer)
        now = self._clock()
        voided = self._requests.remove_peer(peer)
        for block in voided:
            state.remember(state.late, block, now)
        self._release_all(voided)

    def request_rejected(self, peer: P, block: Block) -> bool:
        """BEP 6 ``reject request``: open again, and not asked of this peer for a while. True
        when it answered a request in flight (its bytes will not come)."""
        state = self._peers.get(peer)
        if state is None:
            return False
        if self._requests.discard(peer, block):
            state.remember(state.avoid, block, self._clock() + self._cooldown_s)
            self._release(block)
            return True
        state.late.pop(block, None)  # answer to a request we had already given up on
        return False

    def ban(self, peer: P) -> None:
        """Never request from ``peer`` again in this task, nor accept its blocks.

        Blocks it already delivered to pieces still being collected are dropped and open again,
        so a bad block of its cannot fail the piece later and blame nobody. Complete pieces are
        left alone: their verification (in flight) decides.
        """
        self._banned.add(peer)
        self._release_all(self._requests.remove_peer(peer))
        for piece in self._active.values():
            if len(piece.received) == len(piece.blocks):
                continue
            tainted = [block for block, sender in piece.received.items() if sender == peer]
            for block in tainted:
                del piece.received[block]
            self._release_all(tainted)

    # -- requests --------------------------------------------------------------------------

    def next_requests(self, peer: P, max_blocks: int | None = None) -> list[Block]:
        """Blocks to request from ``peer`` now, at most its free pipeline slots.

        The returned blocks are recorded as in flight at ``peer``; the shell must send them.
        Choking is the shell's business: it asks only while ``peer`` unchokes us.
        """
        state = self._peer(peer)
        if state.wanted == 0 or peer in self._banned:
            return []
        slots = self._requests.free_slots(peer)
        if max_blocks is not None:
            slots = min(slots, max_blocks)
        if slots <= 0:
            return []
        now = self._clock()
        chosen: list[Block] = []
        self._take_started(peer, state, now, slots, chosen)
        if len(chosen) < slots and self._unstarted:
            self._take_new(peer, state, now, slots, chosen)
        if len(chosen) < slots and self.in_endgame:
            self._take_endgame(peer, state, now, slots, chosen)
        return chosen

    def expire(self) -> list[tuple[P, Block]]:
        """Requests older than the timeout, freed for other peers; the shell may ``cancel``."""
        expired = self._requests.expire()
        now = self._clock()
        for peer, block in expired:
            state = self._peers.get(peer)
            if state is not None:
                state.remember(state.avoid, block, now + self._cooldown_s)
                state.remember(state.late, block, now)
        self._release_all([block for _, block in expired])
        return expired

    # -- arrivals --------------------------------------------------------------------------

    def claim_block(self, peer: P, block: Block) -> bool:
        """Whether the payload of ``block`` now arriving from ``peer`` goes into the piece.

        True: it is still needed and nobody else is receiving it; it is now ``peer``'s to
        deliver (``block_received`` or ``block_aborted`` follow). False: read it into scratch
        and drop it (unsolicited, banned peer, already received or being received).
        """
        state = self._peers.get(peer)
        if state is None or peer in self._banned:
            return False
        solicited = self._requests.discard(peer, block)
        if not solicited and block in state.late:
            del state.late[block]
            solicited = True
        if not solicited:
            return False
        piece = self._active.get(block.index)
        if piece is None or block in piece.received or block in self._receiving:
            return False
        self._receiving[block] = peer
        if block in piece.open:  # a late answer to a request we had given up on
            del piece.open[block]
            if not piece.open:
                del self._open_pieces[block.index]
        return True

    def block_received(self, peer: P, block: Block) -> BlockOutcome[P]:
        """The payload of a block claimed by ``peer`` is fully in the piece buffer."""
        if block not in self._receiving or self._receiving[block] != peer:
            raise ValueError(f"{block} from {peer} was not claimed (call claim_block first)")
        del self._receiving[block]
        cancels = self._requests.arrived(peer, block)
        now = self._clock()
        for other, _ in cancels:
            other_state = self._peers.get(other)
            if other_state is not None:
                other_state.remember(other_state.late, block, now)
        piece = self._active.get(block.index)
        if piece is None:  # verified meanwhile from elsewhere (e.g. the origin)
            return BlockOutcome(tuple(cancels), piece_complete=False)
        piece.received[block] = peer
        return BlockOutcome(tuple(cancels), piece_complete=len(piece.received) == len(piece.blocks))

    def block_aborted(self, peer: P, block: Block) -> None:
        """A claimed payload will not complete (connection died): the block is open again."""
        if self._receiving.get(block) == peer:
            del self._receiving[block]
            self._release(block)

    # -- pieces ----------------------------------------------------------------------------

    def hold(self, index: int) -> bool:
        """Do not start piece ``index`` from peers until ``unhold``. True when it is held now;
        False when it is verified, or on its way from peers (a block of it requested or being
        received, or every block in and the piece being verified). A piece started and then
        stalled - the peers that had it left - is held too: what it received so far is
        dropped, and it starts over wherever it comes from."""
        if index in self._unstarted:
            self._unstarted.remove(index)
            self._held.add(index)
            return True
        if index in self._held:
            return True
        piece = self._active.get(index)
        if piece is None or len(piece.received) == len(piece.blocks):
            return False  # verified, or complete and being verified
        requests, receiving = self._requests, self._receiving
        if any(requests.copies(block) or block in receiving for block in piece.blocks):
            return False
        del self._active[index]
        self._open_pieces.pop(index, None)
        self._held.add(index)
        return True

    def unhold(self, index: int) -> None:
        """Peers may be asked for piece ``index`` again (a no-op unless it is held)."""
        if index in self._held:
            self._held.remove(index)
            if index not in self._have:
                self._unstarted.add(index)

    def is_held(self, index: int) -> bool:
        return index in self._held

    def availability(self, index: int) -> int:
        """How many connected peers have piece ``index``."""
        return self._picker.availability(index)

    def piece_verified(self, index: int) -> list[tuple[P, Block]]:
        """We have piece ``index`` now (from peers or from anywhere else).

        Returns requests for its blocks still in flight (only when it came from elsewhere, such
        as the origin): the shell sends them ``cancel``.
        """
        if index in self._have:
            return []
        self._have.add(index)
        self._unstarted.discard(index)
        self._held.discard(index)
        self._open_pieces.pop(index, None)
        piece = self._active.pop(index, None)
        cancels: list[tuple[P, Block]] = []
        now = self._clock()
        if piece is not None:
            for block in piece.blocks:
                for peer in self._requests.peers_for(block):
                    self._requests.discard(peer, block)
                    cancels.append((peer, block))
                    state = self._peers.get(peer)
                    if state is not None:
                        state.remember(state.late, block, now)
        for state in self._peers.values():
            if index in state.bitfield:
                state.wanted -= 1
        return cancels

    def piece_failed(self, index: int) -> set[P]:
        """Hash mismatch: all blocks of ``index`` are open again (strict priority applies).

        Returns the peers that supplied its blocks, for the shell to penalise or ``ban``.
        """
        if index in self._have:
            raise ValueError(f"piece {index} was already verified")
        piece = self._active.get(index)
        if piece is None:
            return set()
        contributors = set(piece.received.values())
        piece.received.clear()
        self._release_all(piece.blocks)
        return contributors

    # -- internals -------------------------------------------------------------------------

    def _peer(self, peer: P) -> PeerBlocks:
        try:
            return self._peers[peer]
        except KeyError:
            raise KeyError(f"unknown peer {peer} (peer_joined first)") from None

    def _release(self, block: Block) -> None:
        """Make ``block`` open if no one is asked for it, receiving it or has delivered it."""
        piece = self._active.get(block.index)
        if (
            piece is None
            or block in piece.open
            or block in piece.received
            or block in self._receiving
            or self._requests.copies(block)
        ):
            return
        # Released blocks (and their piece) go to the front: they are what holds a piece back.
        piece.open[block] = None
        piece.open.move_to_end(block, last=False)
        if block.index not in self._open_pieces:
            self._open_pieces[block.index] = None
            self._open_pieces.move_to_end(block.index, last=False)

    def _release_all(self, blocks: list[Block]) -> None:
        """``_release`` each, oldest first (each goes to the front, so walk them backwards)."""
        for block in reversed(blocks):
            self._release(block)

    def _take_started(
        self, peer: P, state: PeerBlocks, now: float, slots: int, chosen: list[Block]
    ) -> None:
        emptied: list[int] = []
        for index in self._open_pieces:
            if index not in state.bitfield:
                continue
            piece = self._active[index]
            self._take_open(peer, state, piece, now, slots, chosen)
            if not piece.open:
                emptied.append(index)
            if len(chosen) == slots:
                break
        for index in emptied:
            del self._open_pieces[index]

    def _take_new(
        self, peer: P, state: PeerBlocks, now: float, slots: int, chosen: list[Block]
    ) -> None:
        bitfield = state.bitfield
        if bitfield.is_complete():
            candidates = list(self._unstarted)
        else:
            candidates = bitfield.select(self._unstarted)
        while candidates and len(chosen) < slots:
            index = self._picker.pick(candidates, completed=len(self._have))
            assert index is not None
            candidates.remove(index)
            self._unstarted.remove(index)
            piece: PieceBlocks[P] = PieceBlocks(self._layout.blocks(index, self._block_bytes))
            self._active[index] = piece
            self._take_open(peer, state, piece, now, slots, chosen)
            if piece.open:
                self._open_pieces[index] = None

    def _take_open(
        self,
        peer: P,
        state: PeerBlocks,
        piece: PieceBlocks[P],
        now: float,
        slots: int,
        chosen: list[Block],
    ) -> None:
        """Request open blocks of ``piece`` from ``peer`` until ``chosen`` has ``slots``."""
        taken: list[Block] = []
        for block in piece.open:
            if len(chosen) + len(taken) == slots:
                break
            if not (state.avoid and state.avoided(block, now)):
                taken.append(block)
        for block in taken:
            del piece.open[block]
            self._requests.add(peer, block)
        chosen.extend(taken)

    def _take_endgame(
        self, peer: P, state: PeerBlocks, now: float, slots: int, chosen: list[Block]
    ) -> None:
        """Duplicate blocks in flight elsewhere (``peerwire.endgame``)."""
        if now < state.endgame_after:
            return
        duplicates = endgame_duplicates(
            peer,
            state,
            self._requests,
            self._receiving,
            now=now,
            wanted=slots - len(chosen),
            max_copies=self._endgame_copies,
            due=self._due,
        )
        for block in duplicates:
            self._requests.add(peer, block)
        chosen.extend(duplicates)

    def _due(self, block: Block) -> float:
        """When the oldest request still in flight for ``block`` becomes late enough to
        duplicate."""
        holder, sent = self._requests.first_request(block)
        patience = self._endgame_patience_s
        if self._expected_wait is not None:
            expected = self._expected_wait(holder)
            if expected is not None:
                patience = min(patience, OVERDUE_FACTOR * expected)
        return sent + patience
