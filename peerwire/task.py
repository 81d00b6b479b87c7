"""One task on one peer: wires codec, sessions, scheduler, storage and rate limits together.

``PeerTask`` is the owner of every connection attached to its task. It turns protocol events
into scheduler calls and scheduler answers into messages; it verifies completed pieces in a worker
thread (sha256 and ``pwrite`` release the GIL, so the event loop keeps receiving meanwhile);
it serves the requests of other peers from the piece store under the upload limit.

Policies, briefly: at most ``max_unchoked`` interested peers are unchoked at once (by default
as many as ``max_peers``: every interested peer), and while some wait, one of them makes way
for a waiting peer every ``rotate_s`` (``peerwire.choker``); each peer is asked
for about ``pipeline_target_s`` of what it delivers (``peerwire.pipeline``); a peer that alone
supplied a piece failing verification gets a strike, and ``ban_after_bad_pieces`` strikes ban it
from the task; ``have`` messages wait up to ``have_delay_s`` and go out together (or with the
next block or requests to that peer): on a slow link with many connections, one packet per piece
per peer is a real share of the uplink.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import random
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from peerwire import messages as m
from peerwire.auth import auth_proof
from peerwire.choker import Choker
from peerwire.connection import PeerConnection, open_connection
from peerwire.ids import PeerId, TaskId
from peerwire.layout import LARGE_BLOCK_BYTES, STANDARD_BLOCK_BYTES, Block
from peerwire.pipeline import PipelineSizer
from peerwire.ratelimit import AsyncRateLimiter, TokenBucket
from peerwire.scheduler import Scheduler
from peerwire.session import PeerSession
from peerwire.storage import PieceStore

log = logging.getLogger(__name__)


#: Free piece buffers kept for reuse (allocating and zeroing megabytes per piece costs time).
_BUFFER_POOL_SIZE = 8
#: Complete pieces waiting for (or in) verification before we stop requesting more: when
#: hashing falls behind the network, memory must not grow with the backlog.
_MAX_PIECES_VERIFYING = 4
#: Pieces up to this size are verified and written on the event loop: hashing 64 KiB takes
#: tens of microseconds, less than handing it to a worker thread and back (profiled: with 16 KiB
#: pieces, a third of a peer's CPU went to the thread pool's queues).
_INLINE_VERIFY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class WireConfig:
    """Tunables of the peer wire for one task. Defaults suit loopback and datacentre links."""

    block_bytes: int = LARGE_BLOCK_BYTES
    #: Most requests in flight at one peer; the depth used is sized to the peer's rate.
    pipeline_depth: int = 32
    #: Each peer is asked for about this long of what it delivers, and at least
    #: ``min_pipeline_depth`` blocks (also the depth before its rate is known).
    pipeline_target_s: float = 1.0
    min_pipeline_depth: int = 2
    #: Bytes requested from all peers of the task and not yet arrived: bounds the piece
    #: buffers a task can hold, however many peers it has.
    max_inflight_bytes: int = 64 * 1024 * 1024
    request_timeout_s: float = 10.0
    #: Endgame duplicates a block only once its request is overdue: four times as old as its
    #: holder should take, at the rate it has delivered, for all we asked of it
    #: (``peerwire.scheduler.OVERDUE_FACTOR``), and at the latest this long after it was sent.
    #: On slow links a request waits its turn at the sender for seconds (2 Mbit/s shared by a
    #: dozen peers is about one 16 KiB block a second each): duplicating the whole tail at once
    #: wasted 4-6% of the swarm's uploads in bench/run.py (50 clients), a fixed 2 s still 4%,
    #: 5 s under 1%, and so does this rule; on fast links it duplicates within milliseconds.
    endgame_patience_s: float = 5.0
    handshake_timeout_s: float = 10.0
    keepalive_interval_s: float = 30.0
    idle_timeout_s: float = 120.0
    tick_s: float = 0.5
    #: Connections per task we open ourselves (dfget stops dialling here, or at ``max_peers``
    #: if that is lower), half of ``max_peers``: the other half is for peers that come later.
    #: When a crowd arrives, the first to announce (the origin fetchers) are listed to each
    #: other first; dialling 12 of 16 they filled up among themselves, the rest of the crowd
    #: hung off a few links to them, and in one 50-client run 30 clients waited together for
    #: the pieces to come through (all done at 27.6-28.5 s, the fetchers at 19.5-23.8 s).
    #: Each connection also costs a share of a slow uplink and of the CPU (haves, requests,
    #: ACKs): 8 instead of 12 cut the CPU per client by a quarter (bench/README.md).
    dial_peers: int = 8
    #: Connections per task at most, incoming ones included. The room above ``dial_peers`` is
    #: for peers that come later: when everyone stopped at the same number, a crowd's
    #: latecomer found every listed peer full, was refused by all, and sat with no peer until
    #: it fell back to the origin (one 200-client run: 11 copies of the file from the origin).
    max_peers: int = 16
    #: Upload slots: interested peers unchoked at once. As many as there are peers: with four,
    #: a peer that became interested late (an origin fetcher, busy with its own pieces first)
    #: waited behind every neighbour's queue, choked by all twelve for seconds
    #: (bench/run.py at 50 clients: last client 30-33 s with 4 slots, 25 s with 12).
    max_unchoked: int = 16
    #: While peers wait for a slot, the longest-unchoked gives way this often.
    rotate_s: float = 5.0
    #: ``have`` messages to a peer are held this long at most and sent together.
    have_delay_s: float = 1.0
    ban_after_bad_pieces: int = 2
    random_first_pieces: int = 4
    picker_policy: str = "rarest_first"

    def __post_init__(self) -> None:
        positive = {
            "block_bytes": self.block_bytes,
            "pipeline_depth": self.pipeline_depth,
            "request_timeout_s": self.request_timeout_s,
            "handshake_timeout_s": self.handshake_timeout_s,
            "keepalive_interval_s": self.keepalive_interval_s,
            "idle_timeout_s": self.idle_timeout_s,
            "tick_s": self.tick_s,
            "dial_peers": self.dial_peers,
            "max_peers": self.max_peers,
            "max_unchoked": self.max_unchoked,
            "rotate_s": self.rotate_s,
            "pipeline_target_s": self.pipeline_target_s,
            "min_pipeline_depth": self.min_pipeline_depth,
            "max_inflight_bytes": self.max_inflight_bytes,
            "ban_after_bad_pieces": self.ban_after_bad_pieces,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.endgame_patience_s < 0:
            raise ValueError(f"endgame_patience_s must be >= 0, got {self.endgame_patience_s}")


@dataclass
class TaskStats:
    """Counters of one task, for summaries and metrics."""

    downloaded_bytes: int = 0
    uploaded_bytes: int = 0
    wasted_bytes: int = 0
    pieces_verified: int = 0
    pieces_failed: int = 0
    #: Pieces and bytes added from outside the wire (the origin): ``add_origin_piece``.
    origin_pieces: int = 0
    origin_bytes: int = 0
    peers_banned: list[str] = field(default_factory=list)
    bytes_from_peer: dict[str, int] = field(default_factory=dict)


class _Peer:
    """Our side of one attached connection."""

    __slots__ = (
        "conn",
        "haves",
        "key",
        "large_blocks",
        "pipeline",
        "receiving",
        "refill_handle",
        "session",
        "strikes",
        "upload_task",
        "upload_wake",
    )

    def __init__(
        self,
        conn: PeerConnection,
        session: PeerSession,
        large_blocks: bool,
        pipeline: PipelineSizer,
    ) -> None:
        self.conn = conn
        self.key = conn.peer_id
        self.session = session
        self.large_blocks = large_blocks
        #: Blocks claimed for the piece buffer whose ``piece`` event is still to come, in wire
        #: order (the decoder may start the next block before the last one's event is handled).
        self.receiving: deque[Block] = deque()
        self.pipeline = pipeline
        #: Pieces we verified that this peer has not been told of yet.
        self.haves: list[int] = []
        self.refill_handle: asyncio.TimerHandle | None = None
        self.strikes = 0
        self.upload_wake = asyncio.Event()
        self.upload_task: asyncio.Task[None] | None = None


class PeerTask:
    """Download (or seed) one task over the peer wire."""

    def __init__(
        self,
        store: PieceStore,
        *,
        peer_id: PeerId,
        executor: Executor,
        config: WireConfig | None = None,
        download_bucket: TokenBucket | None = None,
        upload_bucket: TokenBucket | None = None,
        rng: random.Random | None = None,
        secret: bytes | None = None,
    ) -> None:
        self.config = config or WireConfig()
        self.store = store
        self.manifest = store.manifest
        self.layout = self.manifest.layout
        self.task_id: TaskId = self.manifest.task_id
        self.peer_id = peer_id
        #: The cluster secret: when set, a peer must prove it holds it (``AuthProof``) before
        #: anything else passes; peers without our AUTH bit are refused.
        self._secret = secret
        self._unauthenticated: dict[PeerConnection, tuple[bytes, float]] = {}
        bits = [m.FAST_EXTENSION_BIT, m.LARGE_BLOCKS_BIT]
        if secret is not None:
            bits.append(m.AUTH_BIT)
        self.reserved = m.reserved_with(*bits)
        self.stats = TaskStats()
        self._executor = executor
        self._loop = asyncio.get_running_loop()
        self._download_bucket = download_bucket
        self._upload = AsyncRateLimiter(upload_bucket) if upload_bucket is not None else None
        self._rng = rng or random.Random()
        self.scheduler: Scheduler[PeerId] = Scheduler(
            self.layout,
            store.have.copy(),
            block_bytes=self.config.block_bytes,
            pipeline_depth=self.config.pipeline_depth,
            request_timeout_s=self.config.request_timeout_s,
            endgame_patience_s=self.config.endgame_patience_s,
            expected_wait=self._expected_wait_s,
            clock=self._loop.time,
            rng=self._rng,
            random_first_pieces=self.config.random_first_pieces,
            policy=self.config.picker_policy,
            # Pieces whose digest is unknown cannot be verified: not asked of peers until known.
            held=[i for i in store.have.missing() if store.digest(i) is None],
        )
        #: Pieces this peer fetches from the origin itself: not asked of peers meanwhile.
        self._origin_claimed: set[int] = set()
        self._max_inflight_blocks = max(
            1, self.config.max_inflight_bytes // self.config.block_bytes
        )
        #: A refill stopped at a task-wide bound (verify backlog, bytes in flight): whatever
        #: lifts it refills every peer. Otherwise a peer is refilled when it changes.
        self._refill_held = False
        self._peers: dict[PeerId, _Peer] = {}
        self._choker: Choker[PeerId] = Choker(
            slots=self.config.max_unchoked, rotate_s=self.config.rotate_s
        )
        self._have_flush: asyncio.TimerHandle | None = None
        self._banned: set[PeerId] = set()
        self._pending: set[PeerConnection] = set()  # outgoing, handshake not done yet
        self._buffers: dict[int, bytearray] = {}
        self._free_buffers: list[bytearray] = []
        self._verifying: dict[int, asyncio.Future[bool]] = {}
        self.completed: asyncio.Future[None] = self._loop.create_future()
        if self.scheduler.is_complete():
            self.completed.set_result(None)
        self._tick_task: asyncio.Task[None] | None = None
        self._closed = False
        #: Called after each verified piece (index); for progress displays.
        self.on_piece: Callable[[int], None] | None = None
        #: Called when a peer is banned: (its id, its address "host:port", the reason); the
        #: download reports it to the tracker.
        self.on_ban: Callable[[PeerId, str, str], None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._tick_task is None:
            self._tick_task = self._loop.create_task(self._tick_loop())

    async def connect(self, host: str, port: int) -> PeerConnection:
        """Open a connection to a peer; it attaches when its handshake arrives."""
        conn = await open_connection(self, host, port, timeout_s=self.config.handshake_timeout_s)
        if not conn.attached and not conn.closed:
            self._pending.add(conn)
            conn.done.add_done_callback(lambda _: self._pending.discard(conn))
        return conn

    async def close(self) -> None:
        """Close every connection and stop; the store stays open (the caller owns it)."""
        if self._closed:
            return
        self._closed = True
        if self._have_flush is not None:
            self._have_flush.cancel()
        tasks = [p.upload_task for p in self._peers.values() if p.upload_task is not None]
        if self._tick_task is not None:
            tasks.append(self._tick_task)
        for task in tasks:
            task.cancel()
        for conn in [*self._pending, *self._unauthenticated]:
            conn.close("task closing")
        for peer in list(self._peers.values()):
            peer.conn.close("task closing")
        await asyncio.gather(*tasks, return_exceptions=True)
        # The store is the caller's to close next: let pieces being written finish first.
        await asyncio.gather(*self._verifying.values(), return_exceptions=True)
        if not self.completed.done():
            self.completed.cancel()

    @property
    def peer_count(self) -> int:
        return len(self._peers)

    @property
    def connecting_count(self) -> int:
        """Connections that may still become peers: dialled (handshake not done yet) or
        authenticating. With ``peer_count``, what a dialler counts against ``dial_peers``."""
        return len(self._pending) + len(self._unauthenticated)

    # -- digests and origin pieces (open manifests) ---------------------------------------------

    def learn_digests(self, digests: dict[int, bytes]) -> int:
        """Digests from the tracker's manifest: those pieces may now be asked of peers.

        Returns how many were new. A digest contradicting one already known is logged and
        ignored (ours came from our own origin fetch or an earlier manifest).
        """
        learned = 0
        for index, digest in digests.items():
            try:
                if self.store.learn_digest(index, digest):
                    learned += 1
            except ValueError as exc:
                log.error("task %s: %s", self.task_id, exc)
                continue
            if index not in self._origin_claimed:
                self.scheduler.unhold(index)
        if learned:
            for peer in list(self._peers.values()):
                self._update_interest(peer)
        return learned

    def claim_for_origin(self, indices: list[int]) -> list[int]:
        """Take pieces off the peer wire to fetch them from the origin; returns those taken
        (pieces already had or already being received from peers are left to the wire)."""
        taken: list[int] = []
        for index in indices:
            if index in self._origin_claimed:
                taken.append(index)
            elif not self.store.has_piece(index) and self.scheduler.hold(index):
                self._origin_claimed.add(index)
                taken.append(index)
        return taken

    def release_from_origin(self, indices: list[int]) -> None:
        """Give claimed pieces back to the peer wire (the origin fetch failed or was taken back)."""
        for index in indices:
            if index in self._origin_claimed:
                self._origin_claimed.discard(index)
                if self.store.digest(index) is not None:
                    self.scheduler.unhold(index)
        self._refill_all()

    @property
    def origin_claimed(self) -> frozenset[int]:
        return frozenset(self._origin_claimed)

    async def add_origin_piece(self, index: int, data: bytes) -> bytes:
        """Store a piece fetched from the origin and announce it to peers; returns its digest.

        When the digest was known (an earlier fetcher reported it), ``data`` must match it:
        ValueError otherwise (the origin changed, or sent garbage). Otherwise the digest is
        computed from ``data`` and learned; the caller reports it to the tracker.
        """
        return (await self.add_origin_pieces(index, [data]))[0]

    async def add_origin_pieces(self, first: int, pieces: list[bytes]) -> list[bytes]:
        """``add_origin_piece`` for consecutive pieces from ``first`` (one Range request's):
        hashed and written in one trip to the worker thread; their digests, in order. A piece
        that does not match its known digest raises ValueError after the others are stored."""
        indices = range(first, first + len(pieces))
        todo = [
            (i, data)
            for i, data in zip(indices, pieces, strict=True)
            if not self.store.has_piece(i)
        ]
        store = self.store
        results = (
            await self._loop.run_in_executor(
                self._executor,
                lambda: [store.commit_piece(i, data, learn=True) for i, data in todo],
            )
            if todo
            else []
        )
        stored = dict(zip((i for i, _ in todo), results, strict=True))
        bad: list[int] = []
        for index, data in zip(indices, pieces, strict=True):
            self._origin_claimed.discard(index)
            ok = stored.get(index)
            if ok is None or index in self.scheduler.have:
                continue  # it was there before, or a peer's copy was verified meanwhile
            if not ok:
                if self.store.digest(index) is not None:
                    self.scheduler.unhold(index)
                bad.append(index)
                continue
            self.stats.origin_pieces += 1
            self.stats.origin_bytes += len(data)
            self._piece_verified(index)
        if stored:
            self._refill_all()
        if len(bad) == 1:
            raise ValueError(f"piece {bad[0]} from the origin does not match its known digest")
        if bad:
            listed = ", ".join(map(str, bad))
            raise ValueError(f"pieces {listed} from the origin do not match their known digests")
        digests: list[bytes] = []
        for index in indices:
            digest = self.store.digest(index)
            assert digest is not None
            digests.append(digest)
        return digests

    # -- ConnectionOwner ------------------------------------------------------------------------

    def attach(self, conn: PeerConnection, handshake: m.Handshake) -> bool:
        key = handshake.peer_id
        if self._closed or key in self._banned:
            return False
        existing = self._peers.get(key)
        if existing is not None:
            # Two peers that dialled each other at once: both keep the connection dialled by
            # the smaller peer id (the same one at both ends), so that one survives instead of
            # each end refusing the other's and neither remaining. With a cluster secret, the
            # newcomer has proven nothing yet: it may not displace anyone.
            if self._secret is not None or not self._dialled_by_smaller(conn, existing.conn):
                return False
            existing.conn.close("duplicate connection (both peers dialled)")
        if len(self._peers) >= self.config.max_peers:
            return False
        self._pending.discard(conn)
        if self._secret is not None:
            if not conn.supports(m.AUTH_BIT):
                log.info("refusing %s: it does not authenticate (cluster secret)", conn.address)
                return False
            nonce = os.urandom(m.AUTH_NONCE_BYTES)
            self._unauthenticated[conn] = (nonce, self._loop.time())
            conn.send((m.AuthChallenge(nonce),))
            return True  # admitted once its AuthProof checks out
        self._admit(conn, key)
        return True

    def _dialled_by_smaller(self, new: PeerConnection, old: PeerConnection) -> bool:
        """Whether ``new`` was dialled by the smaller peer id and ``old`` was not."""
        smaller_dials = self.peer_id.raw < new.peer_id.raw  # then we keep our outgoing one
        return new.outgoing == smaller_dials and old.outgoing != smaller_dials

    def _admit(self, conn: PeerConnection, key: PeerId) -> None:
        session = PeerSession(self.layout, fast=conn.supports(m.FAST_EXTENSION_BIT))
        sizer = PipelineSizer(
            block_bytes=min(self.config.block_bytes, self.layout.piece_length) or 1,
            max_depth=self.config.pipeline_depth,
            min_depth=min(self.config.min_pipeline_depth, self.config.pipeline_depth),
            target_s=self.config.pipeline_target_s,
        )
        peer = _Peer(conn, session, conn.supports(m.LARGE_BLOCKS_BIT), sizer)
        self._peers[key] = peer
        self.scheduler.peer_joined(key)
        conn.send(session.availability_messages(self.store.have))
        peer.upload_task = self._loop.create_task(self._upload_loop(peer))
        log.debug("peer %s attached (%s)", key, conn.address)

    def _authenticate(self, conn: PeerConnection, message: m.Message) -> None:
        """A message from a peer that has not proved the secret yet: only the exchange passes.

        Each side sends an ``AuthChallenge`` right after the handshake and answers the other's
        with an ``AuthProof``; a side admits the other (and only then sends its bitfield) when
        the proof checks out. TCP keeps each side's challenge ahead of its proof, so every
        proof arrives before the first message that needs it.
        """
        assert self._secret is not None
        nonce, _ = self._unauthenticated[conn]
        if isinstance(message, m.AuthChallenge):
            conn.send(
                (m.AuthProof(auth_proof(self._secret, self.task_id, message.nonce, self.peer_id)),)
            )
        elif isinstance(message, m.AuthProof):
            expected = auth_proof(self._secret, self.task_id, nonce, conn.peer_id)
            del self._unauthenticated[conn]
            if not hmac.compare_digest(message.mac, expected):
                conn.close("wrong cluster secret")
                return
            key = conn.peer_id
            if self._closed or key in self._banned or key in self._peers:
                conn.close("refused by the task")
                return
            self._admit(conn, key)
        elif not isinstance(message, m.KeepAlive):
            conn.close("message before authentication")

    def block_sink(
        self, conn: PeerConnection, index: int, begin: int, length: int
    ) -> memoryview | None:
        peer = self._peers.get(conn.peer_id)
        if peer is None:
            return None
        block = Block(index, begin, length)
        if not self.scheduler.claim_block(peer.key, block):
            return None
        peer.receiving.append(block)
        buffer = self._buffers.get(index)
        if buffer is None:
            buffer = self._take_buffer(self.layout.piece_size(index))
            self._buffers[index] = buffer
        return memoryview(buffer)[begin : begin + length]

    def on_message(self, conn: PeerConnection, message: m.Message) -> None:
        if conn in self._unauthenticated:
            self._authenticate(conn, message)
            return
        peer = self._peers.get(conn.peer_id)
        if peer is None:
            return
        if type(message) is m.Have:  # most messages are: the short way
            peer.session.receive_have(message.index)
            if self.scheduler.peer_have(peer.key, message.index):
                if peer.session.am_interested:
                    self._refill(peer)
                else:
                    self._update_interest(peer)
            return
        if isinstance(message, m.AuthChallenge | m.AuthProof):
            conn.close("unexpected authentication message")
            return
        replies = peer.session.receive(message)
        if replies:
            conn.send(replies)
        if isinstance(message, m.Piece):
            self._on_block(peer, message)
        elif isinstance(message, m.Request):
            peer.upload_wake.set()
        elif isinstance(message, m.Bitfield):
            self.scheduler.peer_bitfield(peer.key, peer.session.peer_has)
            self._update_interest(peer)
        elif isinstance(message, m.HaveAll):
            self.scheduler.peer_have_all(peer.key)
            self._update_interest(peer)
        elif isinstance(message, m.Unchoke):
            self._refill(peer)
        elif isinstance(message, m.Choke):
            if not peer.session.fast:  # BEP 6: with fast, rejects come one by one instead
                self.scheduler.peer_choked(peer.key)
                self._refill_all()
        elif isinstance(message, m.RejectRequest):
            block = Block(message.index, message.begin, message.length)
            self.scheduler.request_rejected(peer.key, block)
            self._refill_all()
        elif isinstance(message, m.Interested):
            self._unchoke(self._choker.interested(peer.key, self._loop.time()))
        elif isinstance(message, m.NotInterested):
            conn.send(peer.session.choke())
            self._unchoke(self._choker.not_interested(peer.key, self._loop.time()))

    def on_closed(self, conn: PeerConnection, reason: str) -> None:
        self._unauthenticated.pop(conn, None)
        peer = self._peers.get(conn.peer_id)
        if peer is None or peer.conn is not conn:
            return
        del self._peers[conn.peer_id]
        if peer is None:
            return
        log.debug("peer %s gone: %s", peer.key, reason)
        for block in peer.receiving:
            self.scheduler.block_aborted(peer.key, block)
        self.scheduler.peer_left(peer.key)
        if peer.refill_handle is not None:
            peer.refill_handle.cancel()
        if peer.upload_task is not None:
            peer.upload_task.cancel()
        if not self._closed:
            self._unchoke(self._choker.left(peer.key, self._loop.time()))
            self._refill_all()

    # -- downloading ----------------------------------------------------------------------------

    def _on_block(self, peer: _Peer, message: m.Piece) -> None:
        block = Block(message.index, message.begin, len(message.data))
        key = str(peer.key)
        self.stats.bytes_from_peer[key] = self.stats.bytes_from_peer.get(key, 0) + block.length
        if not peer.receiving or peer.receiving[0] != block:
            self.stats.wasted_bytes += block.length
        else:
            peer.receiving.popleft()
            peer.pipeline.arrived(block.length, self._loop.time())
            self.stats.downloaded_bytes += block.length
            outcome = self.scheduler.block_received(peer.key, block)
            self._send_cancels(outcome.cancels)
            if outcome.piece_complete:
                self._verify(block.index)
        self._refill(peer)
        if not self.scheduler.inflight(peer.key):
            peer.pipeline.idle()  # nothing asked of it: its idle time is not its rate

    def _send_cancels(
        self, cancels: tuple[tuple[PeerId, Block], ...] | list[tuple[PeerId, Block]]
    ) -> None:
        for key, block in cancels:
            other = self._peers.get(key)
            if other is not None:
                other.conn.send((m.Cancel(block.index, block.begin, block.length),))
                self._refill(other)  # the cancelled request's slot is free

    def _refill(self, peer: _Peer) -> None:
        """Send as many requests as the pipeline and the download limit allow now."""
        session = peer.session
        if peer.conn.closed or session.peer_choking or not session.am_interested:
            return
        if len(self._verifying) >= _MAX_PIECES_VERIFYING:
            self._refill_held = True  # _verified refills everyone when the backlog shrinks
            return
        room = self._max_inflight_blocks - self.scheduler.total_inflight()
        if room <= 0:
            self._refill_held = True
            return
        room = min(room, peer.pipeline.depth() - self.scheduler.inflight(peer.key))
        if room <= 0:
            return  # arrivals refill
        if not peer.large_blocks and self.config.block_bytes > STANDARD_BLOCK_BYTES:
            return  # a stock client may refuse our large blocks; it still gets our uploads
        bucket = self._download_bucket
        if bucket is None:
            blocks = self.scheduler.next_requests(peer.key, max_blocks=room)
            if blocks:
                peer.pipeline.requested(self._loop.time())
                peer.conn.send(
                    [
                        *self._take_haves(peer),
                        *(m.Request(b.index, b.begin, b.length) for b in blocks),
                    ]
                )
            return
        # Rate-limited: one block at a time while the bucket is out of debt, so a request is
        # only registered (and its timeout started) when it is actually sent.
        while room > 0 and (delay_s := bucket.delay_s()) <= 0:
            blocks = self.scheduler.next_requests(peer.key, max_blocks=1)
            if not blocks:
                return
            block = blocks[0]
            bucket.reserve(block.length)
            room -= 1
            peer.pipeline.requested(self._loop.time())
            peer.conn.send(
                [*self._take_haves(peer), m.Request(block.index, block.begin, block.length)]
            )
        if room <= 0:
            return  # arrivals refill
        if peer.refill_handle is None or peer.refill_handle.cancelled():
            peer.refill_handle = self._loop.call_later(delay_s, self._deferred_refill, peer)

    def _expected_wait_s(self, key: PeerId) -> float | None:
        """How long ``key`` should take for every request we have in flight there, from the
        rate it has delivered at (None: no rate yet, or no longer a peer)."""
        peer = self._peers.get(key)
        if peer is None or not peer.pipeline.rate_bps:
            return None
        asked = self.scheduler.inflight(key) * peer.pipeline.block_bytes
        return asked / peer.pipeline.rate_bps

    def _deferred_refill(self, peer: _Peer) -> None:
        peer.refill_handle = None
        self._refill(peer)

    def _refill_all(self) -> None:
        self._refill_held = False
        for peer in list(self._peers.values()):
            self._refill(peer)

    def _update_interest(self, peer: _Peer) -> None:
        wanted = self.scheduler.is_interesting(peer.key)
        peer.conn.send(peer.session.interested(wanted))
        if wanted:
            self._refill(peer)

    def _take_buffer(self, size: int) -> bytearray:
        if size == self.layout.piece_length and self._free_buffers:
            return self._free_buffers.pop()
        return bytearray(size)

    def _give_buffer(self, buffer: bytearray) -> None:
        if len(buffer) == self.layout.piece_length and len(self._free_buffers) < _BUFFER_POOL_SIZE:
            self._free_buffers.append(buffer)

    def _verify(self, index: int) -> None:
        buffer = self._buffers.pop(index)
        if len(buffer) <= _INLINE_VERIFY_BYTES:
            done: asyncio.Future[bool] = self._loop.create_future()
            try:
                done.set_result(self.store.commit_piece(index, buffer))
            except Exception as exc:  # what a worker thread would have raised
                done.set_exception(exc)
            self._verified(index, buffer, done)
            return
        future = self._loop.run_in_executor(self._executor, self.store.commit_piece, index, buffer)
        self._verifying[index] = future
        future.add_done_callback(lambda f: self._verified(index, buffer, f))

    def _verified(self, index: int, buffer: bytearray, future: asyncio.Future[bool]) -> None:
        self._verifying.pop(index, None)
        if future.cancelled():
            return
        error = future.exception()  # retrieved even when closing, so it is never "unretrieved"
        if self._closed:
            return
        if error is not None:
            log.error("storing piece %d failed: %s", index, error)
            if not self.completed.done():
                self.completed.set_exception(error)
            return
        self._give_buffer(buffer)
        if future.result():
            if index not in self.scheduler.have:  # the origin may have delivered it meanwhile
                self._piece_verified(index)
            if self._refill_held:
                self._refill_all()
        else:
            self._piece_failed(index)
            self._refill_all()  # its blocks can be asked again, of anyone

    def _piece_verified(self, index: int) -> None:
        self.stats.pieces_verified += 1
        self._send_cancels(self.scheduler.piece_verified(index))
        for peer in self._peers.values():
            if index not in peer.session.peer_has:  # have suppression: it knows already
                peer.haves.append(index)
            if peer.session.am_interested and not self.scheduler.is_interesting(peer.key):
                peer.conn.send(peer.session.interested(False))
        if self._have_flush is None:
            self._have_flush = self._loop.call_later(self.config.have_delay_s, self._flush_haves)
        if self.on_piece is not None:
            self.on_piece(index)
        if self.scheduler.is_complete() and not self.completed.done():
            self.completed.set_result(None)

    def _take_haves(self, peer: _Peer) -> list[m.Message]:
        """The ``have`` messages this peer is still owed (they leave with what we send now)."""
        if not peer.haves:
            return []
        peer_has = peer.session.peer_has
        haves: list[m.Message] = [m.Have(i) for i in peer.haves if i not in peer_has]
        peer.haves.clear()
        return haves

    def _flush_haves(self) -> None:
        self._have_flush = None
        for peer in self._peers.values():
            if peer.haves:
                peer.conn.send(self._take_haves(peer))

    def _piece_failed(self, index: int) -> None:
        self.stats.pieces_failed += 1
        contributors = self.scheduler.piece_failed(index)
        log.warning("piece %d failed verification (from %s)", index, sorted(map(str, contributors)))
        if len(contributors) != 1:
            return  # several senders: no proof against any one; the piece is fetched again
        (key,) = contributors
        if key in self._banned:
            return
        peer = self._peers.get(key)
        strikes = peer.strikes + 1 if peer is not None else self.config.ban_after_bad_pieces
        if peer is not None:
            peer.strikes = strikes
        if strikes >= self.config.ban_after_bad_pieces:
            self._ban(key, f"sent {strikes} corrupt pieces")

    def _ban(self, key: PeerId, reason: str) -> None:
        self._banned.add(key)
        self.scheduler.ban(key)
        self.stats.peers_banned.append(str(key))
        log.warning("banning peer %s: %s", key, reason)
        peer = self._peers.get(key)
        if self.on_ban is not None:
            self.on_ban(key, peer.conn.address if peer is not None else "?", reason)
        if peer is not None:
            peer.conn.close(f"banned: {reason}")

    # -- uploading ------------------------------------------------------------------------------

    def _unchoke(self, keys: list[PeerId]) -> None:
        for key in keys:
            peer = self._peers.get(key)
            if peer is not None:
                peer.conn.send(peer.session.unchoke())

    def _rotate(self) -> None:
        choke, unchoke = self._choker.rotate(self._loop.time())
        for key in choke:
            peer = self._peers.get(key)
            if peer is not None:
                peer.conn.send(peer.session.choke())
        self._unchoke(unchoke)

    async def _upload_loop(self, peer: _Peer) -> None:
        """Serve the peer's queued requests, in order, under the upload limit."""
        session, conn = peer.session, peer.conn
        while not conn.closed:
            block = session.next_queued()
            if block is None:
                peer.upload_wake.clear()
                await peer.upload_wake.wait()
                continue
            if not self.store.has_piece(block.index):
                conn.send(session.reject(block))
                continue
            if self._upload is not None:
                await self._upload.acquire(block.length)
                if session.am_choking:
                    # Choked while waiting: the choke rejected what was queued, not this one.
                    conn.send(session.reject(block))
                    continue
            try:
                payload = self.store.read_block(block.index, block.begin, block.length)
            except (OSError, LookupError) as exc:
                log.error("cannot serve %s to %s: %s", block, peer.key, exc)
                conn.close(f"local read error: {exc}")
                return
            if peer.haves:
                conn.send(self._take_haves(peer))  # the same segment as the block, usually
            conn.send_block(block.index, block.begin, payload)
            self.stats.uploaded_bytes += block.length
            await conn.drain()

    # -- housekeeping ---------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_s)
            self._tick()

    def _tick(self) -> None:
        now = self._loop.time()
        config = self.config
        expired = self.scheduler.expire()
        for key, block in expired:
            peer = self._peers.get(key)
            if peer is not None:
                peer.conn.send((m.Cancel(block.index, block.begin, block.length),))
        for conn in list(self._pending):
            if now - conn.connected_s > config.handshake_timeout_s:
                conn.close("no handshake in time")
        for conn, (_, since) in list(self._unauthenticated.items()):
            if now - since > config.handshake_timeout_s:
                conn.close("no authentication in time")
        for peer in list(self._peers.values()):
            conn = peer.conn
            if now - conn.last_received_s > config.idle_timeout_s:
                conn.close(f"idle for {config.idle_timeout_s:.0f}s")
            elif now - conn.last_sent_s > config.keepalive_interval_s:
                conn.send((m.KeepAlive(),))
        self._rotate()
        # Every tick, not only after expiries: blocks a peer rejected or let time out become
        # askable of it again once their cool-down ends, and nothing else would ask.
        self._refill_all()
