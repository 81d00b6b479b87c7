"""The task core: one task's peer as a state machine, sans-IO.

Events go in as method calls - a connection admitted or gone, a message from a peer (one
dispatch, by the message's type), a piece checked, pieces read from the origin, a coordinator
answer, the timer - and effects come out as commands (``peerwire.commands``: send, close,
verify, dial, announce, ...) that the shell takes with ``take_commands`` and carries out. The
clock is injected; nothing here touches a socket, a file, a thread or the event loop, so the
whole of a task's behaviour is unit-tested with a fake clock and no sockets.

What it decides, briefly (the policies live in their own modules):

* admission: at most ``max_peers`` peers, banned peers never, one connection per peer id
  (``peerwire.admission``, with the cluster-secret exchange);
* downloading: interest, requests sized to each peer's rate (``peerwire.pipeline``), what to
  ask of whom (``peerwire.scheduler``), pieces verified as they complete, a peer that alone
  supplied ``ban_after_bad_pieces`` corrupt pieces banned and reported;
* uploading: upload slots (``peerwire.choker``), the requests each uploader serves next;
  ``have`` messages batched for up to ``have_delay_s``;
* the swarm: when to announce and whom to dial (``peerwire.membership``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable
from typing import ClassVar, TypeVar

from peerwire import messages as m
from peerwire.admission import Admission, Admitted
from peerwire.believing import Believing
from peerwire.bitfield import Bitfield
from peerwire.choker import Choker
from peerwire.commands import Close, Command
from peerwire.digests import DigestBook, Trust
from peerwire.downloading import Downloading
from peerwire.errors import ProtocolError
from peerwire.ids import PeerId, TaskId
from peerwire.layout import Block, PieceLayout
from peerwire.membership import Membership
from peerwire.peerstate import PeerState, TaskStats
from peerwire.pipeline import PipelineSizer
from peerwire.ratelimit import TokenBucket
from peerwire.scheduler import Scheduler
from peerwire.session import PeerSession
from peerwire.swarmlink import SwarmLink
from peerwire.uploading import Uploading
from peerwire.wireconfig import WireConfig

C = TypeVar("C", bound=Hashable)


class TaskCore(Downloading[C], Uploading[C], Believing[C]):
    """Download (or seed) one task: every decision, no I/O. ``C``: the shell's connection."""

    def __init__(
        self,
        layout: PieceLayout,
        have: Bitfield,
        digests: DigestBook,
        *,
        task_id: TaskId,
        peer_id: PeerId,
        clock: Callable[[], float],
        config: WireConfig | None = None,
        rng: random.Random | None = None,
        secret: bytes | None = None,
        download_bucket: TokenBucket | None = None,
        check_claims: bool = True,
    ) -> None:
        """``check_claims``: claimed digests are believed only once an own origin read agrees
        (``peerwire.believing``); False believes them as they come (no origin to check)."""
        self.config = config or WireConfig()
        self.layout = layout
        self.task_id = task_id
        self.peer_id = peer_id
        self.digests = digests
        self.stats = TaskStats()
        #: Our upload limit (the shell's; None: unlimited). With it, a request for a piece
        #: others hold too is refused when ``UPLOAD_QUEUE_S`` of requests wait already.
        self.upload_bucket: TokenBucket | None = None
        self._clock = clock
        self._rng = rng or random.Random()
        self._download_bucket = download_bucket
        self._out: list[Command[C]] = []
        self.check_claims = check_claims
        self.claims_checked = self.claims_refuted = False
        self._checking: set[int] = set()
        self.origin_claimed: set[int] = set()
        self.scheduler: Scheduler[C] = Scheduler(
            layout,
            have.copy(),
            block_bytes=self.config.block_bytes,
            pipeline_depth=self.config.pipeline_depth,
            request_timeout_s=self.config.request_timeout_s,
            endgame_patience_s=self.config.endgame_patience_s,
            expected_wait=self._expected_wait_s,
            clock=clock,
            rng=self._rng,
            random_first_pieces=self.config.random_first_pieces,
            policy=self.config.picker_policy,
            # A piece without a believed digest cannot be verified: not asked of peers yet.
            held=self.held_at_start(list(have.missing())),
        )
        self.admission: Admission[C] = Admission(
            task_id=task_id,
            peer_id=peer_id,
            secret=secret,
            max_peers=self.config.max_peers,
            handshake_timeout_s=self.config.handshake_timeout_s,
            clock=clock,
        )
        self.reserved = self.admission.reserved
        self.swarm = SwarmLink(self, Membership(clock=clock, dial_limit=self._dial_limit()))
        self._peers: dict[C, PeerState[C]] = {}
        self._choker: Choker[C] = Choker(
            slots=self.config.max_unchoked, rotate_s=self.config.rotate_s
        )
        self._max_inflight_blocks = max(
            1, self.config.max_inflight_bytes // self.config.block_bytes
        )
        #: A refill stopped at a task-wide bound (verify backlog, bytes in flight): whatever
        #: lifts it refills every peer. Otherwise a peer is refilled when it changes.
        self._refill_held = False
        #: Peers whose refill waits for the download bucket, first come first served, and
        #: when the bucket is out of debt again (one deadline for them all).
        self._bucket_waiters: dict[C, None] = {}
        #: Peers with requests queued at us, in the order they are served when their pieces
        #: are equally rare (the one served last goes to the end).
        self._upload_ready: dict[C, None] = {}
        #: Pieces we have begun to upload, and how many times: the peers we sent one to will
        #: pass it on, so a busy uplink refuses further requests for it (``_shed``).
        self._copies_sent: dict[int, int] = {}
        self._bucket_at = math.inf
        self._buffers: dict[int, bytearray] = {}
        self._free_buffers: list[bytearray] = []
        self._verifying: set[int] = set()
        #: Pieces verified against claims (a resumed download's, at first).
        self.claim_verified = {i for i in have if digests.trust(i) is Trust.CLAIMED}
        now = clock()
        self._tick_at = now + self.config.tick_s
        self._have_flush_at = math.inf
        self.deadline = self._tick_at
        self.closed = False
        self.done = self.scheduler.is_complete()

    # -- commands out --------------------------------------------------------------------------

    def take_commands(self) -> list[Command[C]]:
        """The commands emitted since the last call, in order."""
        out, self._out = self._out, []
        return out

    def emit(self, command: Command[C]) -> None:
        self._out.append(command)

    # -- queries -------------------------------------------------------------------------------

    @property
    def peer_count(self) -> int:
        return len(self._peers)

    @property
    def connecting_count(self) -> int:
        """Connections that may still become peers: dialled, handshake or proof not done."""
        return self.admission.connecting

    def peer_ids(self) -> list[PeerId]:
        return [peer.peer_id for peer in self._peers.values()]

    def _dial_limit(self) -> int:
        return min(self.config.dial_peers, self.config.max_peers)

    # -- connections ---------------------------------------------------------------------------

    def connection_opened(self, conn: C) -> None:
        """We dialled ``conn`` and sent our handshake; it is a peer once the answer comes."""
        self.admission.opened(conn)

    def peer_connected(
        self, conn: C, handshake: m.Handshake, *, outgoing: bool, address: str
    ) -> bool:
        """The remote handshake arrived on ``conn``; False refuses it (the shell closes it)."""
        if self.closed:
            return False
        result = self.admission.handshake(conn, handshake, outgoing=outgoing, address=address)
        for command in self.admission.take_commands():
            self._out.append(command)
        self._drop_displaced()
        if isinstance(result, Admitted):
            self._admit(result)
            return True
        return result

    def _drop_displaced(self) -> None:
        for displaced in self.admission.displaced:
            self._drop(displaced, "duplicate connection (both peers dialled)")
        self.admission.displaced.clear()

    def _admit(self, admitted: Admitted[C]) -> None:
        config = self.config
        session = PeerSession(self.layout, fast=admitted.fast)
        sizer = PipelineSizer(
            block_bytes=min(config.block_bytes, self.layout.piece_length) or 1,
            max_depth=config.pipeline_depth,
            min_depth=min(config.min_pipeline_depth, config.pipeline_depth),
            target_s=config.pipeline_target_s,
        )
        peer = PeerState(admitted, session, sizer)
        self._peers[admitted.conn] = peer
        self.scheduler.peer_joined(admitted.conn)
        self._send(peer, session.availability_messages(self.have))

    def peer_closed(self, conn: C, reason: str) -> None:
        """``conn`` is gone (whoever closed it)."""
        self.admission.closed(conn)
        self._drop(conn, reason)

    def _drop(self, conn: C, reason: str) -> None:
        peer = self._peers.pop(conn, None)
        if peer is None:
            return
        self._out.append(Close(conn, reason))
        for block in peer.receiving:
            self.scheduler.block_aborted(conn, block)
        self.scheduler.peer_left(conn)
        self._bucket_waiters.pop(conn, None)
        self._upload_ready.pop(conn, None)
        self.admission.left(peer.peer_id, conn)
        if not self.closed:
            self._unchoke(self._choker.left(conn, self._clock()))
            self._refill_all()

    def close(self) -> None:
        """Stop: every connection is closed, no more commands of consequence follow."""
        if self.closed:
            return
        self.closed = True
        self.swarm.stop()
        self.deadline = math.inf
        for conn in self.admission.all_unadmitted():
            self._out.append(Close(conn, "task closing"))
        for conn in list(self._peers):
            self._out.append(Close(conn, "task closing"))

    # -- messages ------------------------------------------------------------------------------

    def message_received(self, conn: C, message: m.Message) -> None:
        """A decoded message from ``conn``: checked in its session's context, then acted on.
        A message the peer may not send closes its connection."""
        peer = self._peers.get(conn)
        if peer is None:
            if self.admission.is_authenticating(conn):
                admitted = self.admission.authenticate(conn, message)
                for command in self.admission.take_commands():
                    self._out.append(command)
                self._drop_displaced()
                if admitted is not None:
                    self._admit(admitted)
            return
        peer.last_received_s = self._clock()
        handler = self._handlers.get(type(message))
        try:
            if handler is None:
                raise ProtocolError(f"unexpected {type(message).__name__} after admission")
            handler(self, peer, message)
        except ProtocolError as exc:
            self._drop(conn, f"protocol error: {exc}")

    def _on_have(self, peer: PeerState[C], message: m.Have) -> None:
        peer.session.receive_have(message.index)
        if self.scheduler.peer_have(peer.conn, message.index):
            if peer.session.am_interested:
                self._refill(peer)
            else:
                self._update_interest(peer)

    def _on_piece(self, peer: PeerState[C], message: m.Piece) -> None:
        block = Block(message.index, message.begin, len(message.data))
        peer.session.receive_piece(block)
        key = str(peer.peer_id)
        self.stats.bytes_from_peer[key] = self.stats.bytes_from_peer.get(key, 0) + block.length
        if not peer.receiving or peer.receiving[0] != block:
            self.stats.wasted_bytes += block.length
        else:
            peer.receiving.popleft()
            peer.pipeline.arrived(block.length, self._clock())
            self.stats.downloaded_bytes += block.length
            outcome = self.scheduler.block_received(peer.conn, block)
            self._send_cancels(outcome.cancels)
            if outcome.piece_complete:
                self._verify(block.index)
        if self._refill_held:
            self._refill_all()  # the room this arrival freed may be another peer's
        else:
            self._refill(peer)
        if not self.scheduler.inflight(peer.conn):
            peer.pipeline.idle()  # nothing asked of it: its idle time is not its rate

    def _on_cancel(self, peer: PeerState[C], message: m.Cancel) -> None:
        self._send(
            peer, peer.session.receive_cancel(Block(message.index, message.begin, message.length))
        )

    def _on_choke(self, peer: PeerState[C], message: m.Choke | m.Unchoke) -> None:
        choked = type(message) is m.Choke
        peer.session.receive_choke(choked)
        if not choked:
            self._refill(peer)
        elif not peer.session.fast:  # BEP 6: with fast, rejects come one by one instead
            self.scheduler.peer_choked(peer.conn)
            self._refill_all()

    def _on_interest(self, peer: PeerState[C], message: m.Interested | m.NotInterested) -> None:
        interested = type(message) is m.Interested
        peer.session.receive_interested(interested)
        now = self._clock()
        if interested:
            self._unchoke(self._choker.interested(peer.conn, now))
        else:
            self._send(peer, peer.session.choke())
            self._unchoke(self._choker.not_interested(peer.conn, now))

    def _on_availability(
        self, peer: PeerState[C], message: m.Bitfield | m.HaveAll | m.HaveNone
    ) -> None:
        peer.session.receive_availability(message)
        if type(message) is m.HaveNone:
            return
        self.scheduler.peer_bitfield(peer.conn, peer.session.peer_has)
        self._update_interest(peer)

    def _on_reject(self, peer: PeerState[C], message: m.RejectRequest) -> None:
        block = Block(message.index, message.begin, message.length)
        peer.session.receive_reject(block)
        if self.scheduler.request_rejected(peer.conn, block) and self._download_bucket:
            # Its bytes were paid for when it was sent; they will not come.
            self._download_bucket.refund(block.length)
        self._refill_all()

    def _on_keepalive(self, peer: PeerState[C], message: m.KeepAlive) -> None:
        pass

    _handlers: ClassVar[dict[type, Callable[..., None]]] = {
        m.Have: _on_have,
        m.Piece: _on_piece,
        m.Request: Uploading._on_request,
        m.Cancel: _on_cancel,
        m.Choke: _on_choke,
        m.Unchoke: _on_choke,
        m.Interested: _on_interest,
        m.NotInterested: _on_interest,
        m.Bitfield: _on_availability,
        m.HaveAll: _on_availability,
        m.HaveNone: _on_availability,
        m.RejectRequest: _on_reject,
        m.KeepAlive: _on_keepalive,
    }

    def block_sink(self, conn: C, index: int, begin: int, length: int) -> memoryview | None:
        """Where the payload of a block now arriving on ``conn`` goes: its place in the piece
        buffer, or None (not wanted: the shell reads it into scratch and drops it)."""
        peer = self._peers.get(conn)
        if peer is None:
            return None
        block = Block(index, begin, length)
        if not self.scheduler.claim_block(conn, block):
            return None
        peer.receiving.append(block)
        buffer = self._buffers.get(index)
        if buffer is None:
            buffer = self._take_buffer(self.layout.piece_size(index))
            self._buffers[index] = buffer
        return memoryview(buffer)[begin : begin + length]

    # -- uploading -----------------------------------------------------------------------------

    def _unchoke(self, conns: list[C]) -> None:
        for conn in conns:
            peer = self._peers.get(conn)
            if peer is not None:
                self._send(peer, peer.session.unchoke())

    # -- time ----------------------------------------------------------------------------------

    def timer_fired(self) -> None:
        """The clock reached ``deadline`` (or later): do what fell due, set the next one."""
        if self.closed:
            self.deadline = math.inf
            return
        now = self._clock()
        if now >= self._have_flush_at:
            self._flush_haves()
        if now >= self._bucket_at:
            self._serve_bucket_waiters(now)
        if now >= self._tick_at:
            self._tick_at = now + self.config.tick_s
            self._tick(now)
        self.swarm.poll()
        self.deadline = min(
            self._tick_at, self._have_flush_at, self._bucket_at, self.swarm.deadline
        )

    def _tick(self, now: float) -> None:
        config = self.config
        for conn, block in self.scheduler.expire():
            peer = self._peers.get(conn)
            if peer is not None:
                self._send(peer, [m.Cancel(block.index, block.begin, block.length)])
        for conn, reason in self.admission.expired():
            self._out.append(Close(conn, reason))
        for peer in list(self._peers.values()):
            if now - peer.last_received_s > config.idle_timeout_s:
                self._drop(peer.conn, f"idle for {config.idle_timeout_s:.0f}s")
            elif now - peer.last_sent_s > config.keepalive_interval_s:
                self._send(peer, [m.KeepAlive()])
        choke, unchoke = self._choker.rotate(now)
        for conn in choke:
            peer = self._peers.get(conn)
            if peer is not None:
                self._send(peer, peer.session.choke())
        self._unchoke(unchoke)
        # Every tick, not only after expiries: blocks a peer rejected or let time out become
        # askable of it again once their cool-down ends, and nothing else would ask.
        self._refill_all()
