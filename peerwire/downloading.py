"""The downloading half of the task core: requests, piece buffers, verification, ``have``
batching, strikes and bans, and the pieces this peer fetches from the origin itself.

A mixin of ``peerwire.core.TaskCore`` (same object, same state: the hot path - a block arrives,
requests are refilled - stays a plain method call); the attributes it uses are set up by the
core and declared below.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from peerwire import messages as m
from peerwire.admission import Admission
from peerwire.bitfield import Bitfield
from peerwire.commands import Command, PieceDone, ReportPeer, Send, TaskDone, Verify
from peerwire.digests import DigestBook, Trust
from peerwire.layout import STANDARD_BLOCK_BYTES, Block, PieceLayout
from peerwire.peerstate import PeerState, TaskStats
from peerwire.ratelimit import TokenBucket
from peerwire.scheduler import Scheduler
from peerwire.wireconfig import WireConfig

log = logging.getLogger(__name__)

C = TypeVar("C", bound=Hashable)

#: Free piece buffers kept for reuse (allocating and zeroing megabytes per piece costs time).
BUFFER_POOL_SIZE = 8
#: Complete pieces waiting for (or in) verification before we stop requesting more: when
#: hashing falls behind the network, memory must not grow with the backlog.
MAX_PIECES_VERIFYING = 4


class Downloading(Generic[C]):
    """Requests out, pieces in, verified pieces announced."""

    config: WireConfig
    layout: PieceLayout
    digests: DigestBook
    stats: TaskStats
    scheduler: Scheduler[C]
    admission: Admission[C]
    closed: bool
    done: bool
    deadline: float
    origin_claimed: set[int]
    #: Pieces verified against a digest that was only a claim (dropped if it is refuted).
    claim_verified: set[int]
    _clock: Callable[[], float]
    _out: list[Command[C]]
    _peers: dict[C, PeerState[C]]
    _download_bucket: TokenBucket | None
    _max_inflight_blocks: int
    _refill_held: bool
    _bucket_waiters: dict[C, None]
    _bucket_at: float
    _buffers: dict[int, bytearray]
    _free_buffers: list[bytearray]
    _verifying: set[int]
    _have_flush_at: float

    @property
    def have(self) -> Bitfield:
        """The verified pieces (the scheduler's; do not change it)."""
        return self.scheduler.have

    def _send(self, peer: PeerState[C], messages: list[m.Message]) -> None:
        if messages:
            self._out.append(Send(peer.conn, messages))
            peer.last_sent_s = self._clock()

    def _wake_at(self, when: float) -> None:
        if when < self.deadline:
            self.deadline = when

    def _drop(self, conn: C, reason: str) -> None:
        raise NotImplementedError  # TaskCore's

    def _send_cancels(self, cancels: tuple[tuple[C, Block], ...] | list[tuple[C, Block]]) -> None:
        for conn, block in cancels:
            other = self._peers.get(conn)
            if other is not None:
                self._send(other, [m.Cancel(block.index, block.begin, block.length)])
                self._refill(other)  # the cancelled request's slot is free

    def _refill(self, peer: PeerState[C]) -> None:
        """Send as many requests as the pipeline and the download limit allow now."""
        session = peer.session
        if session.peer_choking or not session.am_interested or self.closed:
            return
        if len(self._verifying) >= MAX_PIECES_VERIFYING:
            self._refill_held = True  # piece_checked refills everyone when the backlog shrinks
            return
        room = self._max_inflight_blocks - self.scheduler.total_inflight()
        if room <= 0:
            self._refill_held = True
            return
        conn = peer.conn
        room = min(room, peer.pipeline.depth() - self.scheduler.inflight(conn))
        if room <= 0:
            return  # arrivals refill
        if not peer.large_blocks and self.config.block_bytes > STANDARD_BLOCK_BYTES:
            return  # a stock client may refuse our large blocks; it still gets our uploads
        bucket = self._download_bucket
        if bucket is None:
            blocks = self.scheduler.next_requests(conn, max_blocks=room)
            if blocks:
                peer.pipeline.requested(self._clock())
                requests = [m.Request(b.index, b.begin, b.length) for b in blocks]
                self._send(peer, [*self._take_haves(peer), *requests])
            return
        # Rate-limited: one block at a time while the bucket is out of debt, so a request is
        # only registered (and its timeout started) when it is actually sent.
        while room > 0 and (delay_s := bucket.delay_s()) <= 0:
            blocks = self.scheduler.next_requests(conn, max_blocks=1)
            if not blocks:
                return
            block = blocks[0]
            bucket.reserve(block.length)
            room -= 1
            peer.pipeline.requested(self._clock())
            request = m.Request(block.index, block.begin, block.length)
            self._send(peer, [*self._take_haves(peer), request])
        if room > 0:
            # Waits for the bucket with the others: one wake-up when it is out of debt.
            self._bucket_waiters[conn] = None
            if self._bucket_at == math.inf:
                self._bucket_at = self._clock() + delay_s
                self._wake_at(self._bucket_at)

    def _serve_bucket_waiters(self, now: float) -> None:
        """The download bucket is out of debt: refill the peers waiting for it, first come
        first served, while it stays so (a peer that takes the last token waits again, last)."""
        self._bucket_at = math.inf
        bucket = self._download_bucket
        waiters = self._bucket_waiters
        while waiters and bucket is not None:
            delay_s = bucket.delay_s()
            if delay_s > 0:
                self._bucket_at = now + delay_s
                self._wake_at(self._bucket_at)
                return
            conn = next(iter(waiters))
            del waiters[conn]
            peer = self._peers.get(conn)
            if peer is not None:
                self._refill(peer)

    def _expected_wait_s(self, conn: C) -> float | None:
        """How long ``conn`` should take for every request we have in flight there, from the
        rate it has delivered at (None: no rate yet, or no longer a peer)."""
        peer = self._peers.get(conn)
        if peer is None or not peer.pipeline.rate_bps:
            return None
        asked = self.scheduler.inflight(conn) * peer.pipeline.block_bytes
        return asked / peer.pipeline.rate_bps

    def _refill_all(self) -> None:
        self._refill_held = False
        for peer in list(self._peers.values()):
            self._refill(peer)

    def _update_interest(self, peer: PeerState[C]) -> None:
        wanted = self.scheduler.is_interesting(peer.conn)
        self._send(peer, peer.session.interested(wanted))
        if wanted:
            self._refill(peer)

    def update_interest(self) -> None:
        """Re-evaluate interest in every peer (pieces became askable)."""
        for peer in list(self._peers.values()):
            self._update_interest(peer)

    def _take_buffer(self, size: int) -> bytearray:
        if size == self.layout.piece_length and self._free_buffers:
            return self._free_buffers.pop()
        return bytearray(size)

    def _drop_buffer(self, index: int) -> None:
        """Piece ``index`` will not be completed from peers: its buffer goes back to the pool."""
        buffer = self._buffers.pop(index, None)
        if buffer is not None:
            self._give_buffer(buffer)

    def _give_buffer(self, buffer: bytearray) -> None:
        if len(buffer) == self.layout.piece_length and len(self._free_buffers) < BUFFER_POOL_SIZE:
            self._free_buffers.append(buffer)

    def _verify(self, index: int) -> None:
        buffer = self._buffers.pop(index)
        expected = self.digests.get(index)
        if expected is None:
            # Its digest was a claim, dropped while its blocks came in: nothing can check it.
            self._give_buffer(buffer)
            self.scheduler.piece_failed(index)
            self.scheduler.hold(index)
            return
        self._verifying.add(index)
        self._out.append(Verify(index, buffer, expected))

    def piece_checked(self, index: int, buffer: bytearray, digest: bytes | None) -> None:
        """The outcome of a ``Verify``: the piece's digest when it matched and is stored."""
        self._verifying.discard(index)
        if self.closed:
            return
        self._give_buffer(buffer)
        if digest is not None:
            if index not in self.have:  # the origin may have delivered it meanwhile
                self.piece_verified(index)
            if self._refill_held:
                self._refill_all()
        else:
            self._piece_failed(index)
            self._refill_all()  # its blocks can be asked again, of anyone

    def piece_verified(self, index: int) -> None:
        """Piece ``index`` is stored and verified (from a peer, or the origin): tell peers."""
        self.stats.pieces_verified += 1
        if self.digests.trust(index) is Trust.CLAIMED:
            self.claim_verified.add(index)
        self._send_cancels(self.scheduler.piece_verified(index))
        for peer in self._peers.values():
            if index not in peer.session.peer_has:  # have suppression: it knows already
                peer.haves.append(index)
            if peer.session.am_interested and not self.scheduler.is_interesting(peer.conn):
                self._send(peer, peer.session.interested(False))
        if self._have_flush_at == math.inf:
            self._have_flush_at = self._clock() + self.config.have_delay_s
            self._wake_at(self._have_flush_at)
        self._out.append(PieceDone(index))
        if not self.done and self.scheduler.is_complete():
            self.done = True
            self._out.append(TaskDone())

    def _take_haves(self, peer: PeerState[C]) -> list[m.Message]:
        """The ``have`` messages this peer is still owed (they leave with what we send now)."""
        if not peer.haves:
            return []
        peer_has = peer.session.peer_has
        haves: list[m.Message] = [m.Have(i) for i in peer.haves if i not in peer_has]
        peer.haves.clear()
        return haves

    def _flush_haves(self) -> None:
        self._have_flush_at = math.inf
        for peer in self._peers.values():
            if peer.haves:
                self._send(peer, self._take_haves(peer))

    def _piece_failed(self, index: int) -> None:
        self.stats.pieces_failed += 1
        contributors = self.scheduler.piece_failed(index)
        senders = sorted(str(peer.peer_id) for c in contributors if (peer := self._peers.get(c)))
        log.warning("piece %d failed verification (from %s)", index, senders)
        if len(contributors) != 1:
            return  # several senders: no proof against any one; the piece is fetched again
        (conn,) = contributors
        peer = self._peers.get(conn)
        if peer is None:
            return
        peer.strikes += 1
        if peer.strikes >= self.config.ban_after_bad_pieces:
            self._ban(peer, f"sent {peer.strikes} corrupt pieces")

    def _ban(self, peer: PeerState[C], reason: str) -> None:
        self.admission.ban(peer.peer_id)
        self.scheduler.ban(peer.conn)
        self.stats.peers_banned.append(str(peer.peer_id))
        log.warning("banning peer %s: %s", peer.peer_id, reason)
        self._out.append(ReportPeer(peer.peer_id, peer.address, reason))
        self._drop(peer.conn, f"banned: {reason}")
