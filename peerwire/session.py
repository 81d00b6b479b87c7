"""Per-peer session state: choke and interest on both sides, what the peer has, its requests.

Sans-IO. The ``receive_*`` methods check a decoded message against the session's context and
apply it; anything the remote side may not send now raises ``ProtocolError``. The state methods
(``choke``, ``interested``, ...) return the messages to put on the wire.
"""

from __future__ import annotations

from collections import OrderedDict

from peerwire import messages as m
from peerwire.bitfield import Bitfield
from peerwire.errors import ProtocolError
from peerwire.layout import MAX_BLOCK_BYTES, Block, PieceLayout

#: Requests a peer may have queued at us at once; more is a flood (closes the connection).
DEFAULT_MAX_QUEUED_REQUESTS = 256


class PeerSession:
    """What we know about one connected peer, and what it may legally send next."""

    def __init__(
        self,
        layout: PieceLayout,
        *,
        fast: bool,
        max_request_bytes: int = MAX_BLOCK_BYTES,
        max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS,
    ) -> None:
        self.layout = layout
        #: BEP 6 negotiated: both handshakes set the fast-extension bit.
        self.fast = fast
        self.max_request_bytes = max_request_bytes
        self.max_queued_requests = max_queued_requests
        self.am_choking = True
        self.am_interested = False
        self.peer_choking = True
        self.peer_interested = False
        self.peer_has = Bitfield(layout.num_pieces)
        #: Blocks the peer asked us for and we have not served yet, oldest first.
        self.queued: OrderedDict[Block, None] = OrderedDict()
        self._first_message = True

    @property
    def peer_is_seed(self) -> bool:
        return self.peer_has.is_complete()

    # -- receiving ----------------------------------------------------------------------------

    # Each ``receive_*`` checks one kind of message in context and applies it; the task core
    # dispatches a message once, by its type, to the one that handles it.

    def receive_have(self, index: int) -> None:
        self._first_message = False
        if not 0 <= index < self.layout.num_pieces:
            raise ProtocolError(f"have for piece {index} out of range")
        self.peer_has.add(index)

    def receive_piece(self, block: Block) -> None:
        """A ``piece`` message's header (its payload went where the core said)."""
        self._first_message = False
        self._check_block(block, "piece")

    def receive_request(self, block: Block) -> list[m.Message]:
        """Queue the request; returns a reject when it is refused (BEP 6), else nothing."""
        self._first_message = False
        return self._receive_request(block)

    def receive_cancel(self, block: Block) -> list[m.Message]:
        self._first_message = False
        if block in self.queued:
            # BEP 6: with the fast extension every request gets exactly one answer, so a
            # cancelled one is rejected; without it, it is silently dropped.
            return self.reject(block)
        return []

    def receive_choke(self, choking: bool) -> None:
        """``choke`` (True) or ``unchoke`` (False)."""
        self._first_message = False
        self.peer_choking = choking

    def receive_interested(self, interested: bool) -> None:
        """``interested`` (True) or ``not interested`` (False)."""
        self._first_message = False
        self.peer_interested = interested

    def receive_availability(self, message: m.Bitfield | m.HaveAll | m.HaveNone) -> None:
        first, self._first_message = self._first_message, False
        self._receive_availability(message, first)

    def receive_reject(self, block: Block) -> None:
        self._first_message = False
        self._require_fast("reject request")
        self._check_block(block, "reject")

    def _receive_availability(
        self, message: m.Bitfield | m.HaveAll | m.HaveNone, first: bool
    ) -> None:
        # BEP 3: the bitfield "is only ever sent as the first message"; BEP 6 likewise for
        # have-all / have-none, which stand in for it.
        if not first:
            raise ProtocolError(f"{type(message).__name__} after other messages")
        if isinstance(message, m.Bitfield):
            self.peer_has = Bitfield.from_bytes(message.payload, self.layout.num_pieces)
        elif isinstance(message, m.HaveAll):
            self._require_fast("have all")
            self.peer_has = Bitfield.full(self.layout.num_pieces)
        else:
            self._require_fast("have none")

    def _receive_request(self, block: Block) -> list[m.Message]:
        self._check_block(block, "request")
        if block.length > self.max_request_bytes:
            raise ProtocolError(f"request of {block.length} bytes exceeds {self.max_request_bytes}")
        if self.am_choking:
            # BEP 3: requests from a choked peer are dropped; BEP 6 makes the refusal explicit.
            return self.reject(block)
        if block not in self.queued:
            if len(self.queued) >= self.max_queued_requests:
                raise ProtocolError(f"more than {self.max_queued_requests} requests queued")
            self.queued[block] = None
        return []

    def _check_block(self, block: Block, what: str) -> None:
        if not self.layout.contains(block):
            raise ProtocolError(
                f"{what} out of range: piece {block.index} begin {block.begin} "
                f"length {block.length}"
            )

    def _require_fast(self, what: str) -> None:
        if not self.fast:
            raise ProtocolError(f"{what} without the fast extension (BEP 6) negotiated")

    # -- sending ------------------------------------------------------------------------------

    def availability_messages(self, have: Bitfield) -> list[m.Message]:
        """What to send right after the handshake to say which pieces we have."""
        if self.fast:
            if have.is_complete():
                return [m.HaveAll()]
            if len(have) == 0:
                return [m.HaveNone()]
        elif len(have) == 0:
            return []  # BEP 3: peers with no pieces may skip the bitfield
        return [m.Bitfield(have.to_bytes())]

    def choke(self) -> list[m.Message]:
        """Choke the peer: its queued requests are dropped (BEP 6: rejected explicitly)."""
        if self.am_choking:
            return []
        self.am_choking = True
        out: list[m.Message] = [m.Choke()]
        if self.fast:
            out.extend(m.RejectRequest(b.index, b.begin, b.length) for b in self.queued)
        self.queued.clear()
        return out

    def unchoke(self) -> list[m.Message]:
        if not self.am_choking:
            return []
        self.am_choking = False
        return [m.Unchoke()]

    def interested(self, wanted: bool) -> list[m.Message]:
        if wanted == self.am_interested:
            return []
        self.am_interested = wanted
        return [m.Interested() if wanted else m.NotInterested()]

    def next_queued(self) -> Block | None:
        """Oldest request to serve, removed from the queue."""
        if not self.queued:
            return None
        block, _ = self.queued.popitem(last=False)
        return block

    def reject(self, block: Block) -> list[m.Message]:
        """Refuse a request (a piece we do not have): BEP 6 reject, or silence without it."""
        self.queued.pop(block, None)
        if self.fast:
            return [m.RejectRequest(block.index, block.begin, block.length)]
        return []
